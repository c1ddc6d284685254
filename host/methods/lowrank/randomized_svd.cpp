#include "methods/lowrank/randomized_svd.hpp"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/large_buffer.hpp"
#include "kernels/counter_rng.hpp"
#include "backend/cpu_parallel.hpp"
#include "backend/lapack_check.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Replaces the column-major m × l matrix by an orthonormal basis of its range (Householder).
void orthonormalize(std::vector<double>& y, i64 m, i64 l, std::vector<double>& tau) {
  tau.resize(static_cast<std::size_t>(l));
  check_lapack(LAPACKE_dgeqrf(LAPACK_COL_MAJOR, m, l, y.data(), m, tau.data()), "dgeqrf", m, l);
  check_lapack(LAPACKE_dorgqr(LAPACK_COL_MAJOR, m, l, l, y.data(), m, tau.data()), "dorgqr", m, l);
}
void orthonormalize(std::vector<float>& y, i64 m, i64 l, std::vector<float>& tau) {
  tau.resize(static_cast<std::size_t>(l));
  check_lapack(LAPACKE_sgeqrf(LAPACK_COL_MAJOR, m, l, y.data(), m, tau.data()), "sgeqrf", m, l);
  check_lapack(LAPACKE_sorgqr(LAPACK_COL_MAJOR, m, l, l, y.data(), m, tau.data()), "sorgqr", m, l);
}

// Runs body(i) for i in [0, count) in chunks on the OpenMP threads (elementwise work: the
// result does not depend on the thread count).
template <class Body>
void for_chunks(std::size_t count, Body body) {
  constexpr std::int64_t kChunk = 1 << 16;
  const auto chunks = static_cast<std::int64_t>((count + kChunk - 1) / kChunk);
  cpu::parallel_for(omp_get_max_threads(), chunks, [&](std::int64_t c) {
    const std::size_t end = std::min(count, static_cast<std::size_t>((c + 1) * kChunk));
    for (std::size_t i = static_cast<std::size_t>(c * kChunk); i < end; ++i) body(i);
  });
}

// The power iterations only steer the sketch toward the dominant subspace, so they run in f32
// on an f32 copy of A (half the bytes and twice the SIMD width of each pass over A): leaves in
// w.z the n × l matrix Z whose product A Z, taken in f64, spans the subspace. The range is then
// exact to f64 rounding inside range(A) — an exactly low-rank A still comes back exactly — and
// the error report, computed from an f64 orthonormal Q, stays exact.
void power_iterations_f32(std::span<const double> a, std::span<const float> given, i64 m, i64 n,
                          i64 l, int q, RandomizedSvdWork& w) {
  std::span<const float> a32 = given;
  if (a32.empty()) {
    // On huge pages: a few hundred faults instead of ~10⁵, and the passes over it are TLB-bound.
    const auto copy = w.a32.first(a.size());
    for_chunks(a.size(), [&](std::size_t i) { copy[i] = static_cast<float>(a[i]); });
    a32 = copy;
  }
  w.z32.assign(w.omega.begin(), w.omega.end());
  w.y32.resize(static_cast<std::size_t>(m * l));
  for (int it = 0; it < q; ++it) {
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, l, n, 1.0f, a32.data(), m, w.z32.data(),
                n, 0.0f, w.y32.data(), m);
    orthonormalize(w.y32, m, l, w.tau32);
    cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, n, l, m, 1.0f, a32.data(), m, w.y32.data(), m,
                0.0f, w.z32.data(), n);
    orthonormalize(w.z32, n, l, w.tau32);
  }
  w.z.assign(w.z32.begin(), w.z32.end());
}

}  // namespace

TruncatedSvd randomized_svd(std::span<const double> a, i64 m, i64 n, const RandomizedSvdOptions& o,
                            RandomizedSvdWork* work, std::span<const float> a32) {
  TruncatedSvd r;
  const i64 small = std::min(m, n);
  r.k = std::min(o.rank, small);
  const i64 l = std::min(o.rank + std::max<i64>(o.oversampling, 0), small);
  if (r.k <= 0 || l <= 0) return r;
  RandomizedSvdWork own;
  RandomizedSvdWork& w = work ? *work : own;
  const auto size = [](i64 count) { return static_cast<std::size_t>(count); };
  // Ω: n × l Gaussian; Y = A Ω.
  w.omega.resize(size(n * l));
  for_chunks(w.omega.size(), [&](std::size_t i) { w.omega[i] = kernels::counter_normal(o.seed, o.stream, i); });
  // Z: Ω, or Ω after q power iterations (f32); then Y = A Z in f64 and Q = orth(Y).
  if (o.power_iterations > 0) power_iterations_f32(a, a32, m, n, l, o.power_iterations, w);
  const std::vector<double>& z = o.power_iterations > 0 ? w.z : w.omega;
  w.y.resize(size(m * l));
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, l, n, 1.0, a.data(), m, z.data(), n,
              0.0, w.y.data(), m);
  orthonormalize(w.y, m, l, w.tau);
  // B = Qᵀ A (l × n), its exact SVD, U = Q U_B.
  w.b.resize(size(l * n));
  cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, l, n, m, 1.0, w.y.data(), m, a.data(), m,
              0.0, w.b.data(), l);
  for (const double x : w.b) r.captured += x * x;
  w.ub.resize(size(l * l));
  w.s.resize(size(l));
  w.vt.resize(size(l * n));
  check_lapack(LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', l, n, w.b.data(), l, w.s.data(), w.ub.data(), l,
                              w.vt.data(), l),
               "dgesdd", l, n);
  r.u.resize(size(m * r.k));
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, r.k, l, 1.0, w.y.data(), m, w.ub.data(), l,
              0.0, r.u.data(), m);
  r.s.assign(w.s.begin(), w.s.begin() + r.k);
  r.v.resize(size(n * r.k));
  for (i64 c = 0; c < r.k; ++c)
    for (i64 j = 0; j < n; ++j) r.v[c * n + j] = w.vt[j * l + c];
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
