#include "methods/lowrank/randomized_svd.hpp"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/large_buffer.hpp"
#include "kernels/counter_rng.hpp"
#include "backend/lapack_check.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Replaces the column-major m × l matrix by an orthonormal basis of its range (Householder).
void orthonormalize(std::vector<double>& y, i64 m, i64 l) {
  std::vector<double> tau(static_cast<std::size_t>(l));
  check_lapack(LAPACKE_dgeqrf(LAPACK_COL_MAJOR, m, l, y.data(), m, tau.data()), "dgeqrf", m, l);
  check_lapack(LAPACKE_dorgqr(LAPACK_COL_MAJOR, m, l, l, y.data(), m, tau.data()), "dorgqr", m, l);
}
void orthonormalize(std::vector<float>& y, i64 m, i64 l) {
  std::vector<float> tau(static_cast<std::size_t>(l));
  check_lapack(LAPACKE_sgeqrf(LAPACK_COL_MAJOR, m, l, y.data(), m, tau.data()), "sgeqrf", m, l);
  check_lapack(LAPACKE_sorgqr(LAPACK_COL_MAJOR, m, l, l, y.data(), m, tau.data()), "sorgqr", m, l);
}

// The power iterations only steer the sketch toward the dominant subspace, so they run in f32
// on an f32 copy of A (half the bytes and twice the SIMD width of each pass over A): returns
// the n × l matrix Z whose product A Z, taken in f64, spans the subspace. The range is then
// exact to f64 rounding inside range(A) — an exactly low-rank A still comes back exactly — and
// the error report, computed from an f64 orthonormal Q, stays exact.
std::vector<double> power_iterations_f32(std::span<const double> a, i64 m, i64 n, i64 l,
                                         const std::vector<double>& omega, int q) {
  // On huge pages: a few hundred faults instead of ~10⁵, and the passes over it are TLB-bound.
  LargeBuffer<float> copy;
  const auto a32 = copy.first(a.size());
  std::copy(a.begin(), a.end(), a32.begin());
  std::vector<float> z(omega.begin(), omega.end()), y(static_cast<std::size_t>(m * l));
  for (int it = 0; it < q; ++it) {
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, l, n, 1.0f, a32.data(), m, z.data(),
                n, 0.0f, y.data(), m);
    orthonormalize(y, m, l);
    cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, n, l, m, 1.0f, a32.data(), m, y.data(), m,
                0.0f, z.data(), n);
    orthonormalize(z, n, l);
  }
  return {z.begin(), z.end()};
}

}  // namespace

TruncatedSvd randomized_svd(std::span<const double> a, i64 m, i64 n, const RandomizedSvdOptions& o) {
  TruncatedSvd r;
  const i64 small = std::min(m, n);
  r.k = std::min(o.rank, small);
  const i64 l = std::min(o.rank + std::max<i64>(o.oversampling, 0), small);
  if (r.k <= 0 || l <= 0) return r;
  // Ω: n × l Gaussian; Y = A Ω.
  std::vector<double> omega(static_cast<std::size_t>(n * l));
  for (std::size_t i = 0; i < omega.size(); ++i) omega[i] = kernels::counter_normal(o.seed, o.stream, i);
  // Z: Ω, or Ω after q power iterations (f32); then Y = A Z in f64 and Q = orth(Y).
  const std::vector<double> z =
      o.power_iterations > 0 ? power_iterations_f32(a, m, n, l, omega, o.power_iterations) : omega;
  std::vector<double> y(static_cast<std::size_t>(m * l));
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, l, n, 1.0, a.data(), m, z.data(), n,
              0.0, y.data(), m);
  orthonormalize(y, m, l);
  // B = Qᵀ A (l × n), its exact SVD, U = Q U_B.
  std::vector<double> b(static_cast<std::size_t>(l * n));
  cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, l, n, m, 1.0, y.data(), m, a.data(), m,
              0.0, b.data(), l);
  for (const double x : b) r.captured += x * x;
  std::vector<double> ub(static_cast<std::size_t>(l * l)), s(static_cast<std::size_t>(l)),
      vt(static_cast<std::size_t>(l * n));
  check_lapack(LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', l, n, b.data(), l, s.data(), ub.data(), l, vt.data(), l),
        "dgesdd", l, n);
  r.u.resize(static_cast<std::size_t>(m * r.k));
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, r.k, l, 1.0, y.data(), m, ub.data(), l,
              0.0, r.u.data(), m);
  r.s.assign(s.begin(), s.begin() + r.k);
  r.v.resize(static_cast<std::size_t>(n * r.k));
  for (i64 c = 0; c < r.k; ++c)
    for (i64 j = 0; j < n; ++j) r.v[c * n + j] = vt[j * l + c];
  return r;
}

void leading_svd(std::span<const double> a, i64 l, i64 k, double* u, double* s, double* v) {
  std::vector<double> copy(a.begin(), a.end()), sv(static_cast<std::size_t>(l)),
      ul(static_cast<std::size_t>(l * l)), vt(static_cast<std::size_t>(l * l));
  check_lapack(LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', l, l, copy.data(), l, sv.data(), ul.data(), l,
                              vt.data(), l),
               "dgesdd", l, l);
  std::copy(ul.begin(), ul.begin() + l * k, u);
  std::copy(sv.begin(), sv.begin() + k, s);
  for (i64 c = 0; c < k; ++c)
    for (i64 i = 0; i < l; ++i) v[c * l + i] = vt[i * l + c];
}

}  // namespace revmerge
