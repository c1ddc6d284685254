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

bool cholesky_qr2(double* x, i64 rows, i64 cols, double* r, std::vector<double>& g,
                  std::vector<double>& first) {
  const auto n = static_cast<std::size_t>(cols * cols);
  g.resize(n);
  first.resize(n);
  for (int round = 0; round < 2; ++round) {
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasTrans, cols, rows, 1.0, x, rows, 0.0, g.data(), cols);
    if (LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', cols, g.data(), cols) != 0) return false;
    for (i64 j = 0; j < cols; ++j)  // dpotrf leaves the strict lower triangle as it found it
      for (i64 i = j + 1; i < cols; ++i) g[static_cast<std::size_t>(j * cols + i)] = 0;
    cblas_dtrsm(CblasColMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, rows, cols, 1.0,
                g.data(), cols, x, rows);
    if (round == 0) {
      first = g;
      continue;
    }
    for (i64 j = 0; j < cols; ++j)
      for (i64 i = 0; i <= j; ++i)
        if (std::abs(g[static_cast<std::size_t>(j * cols + i)] - (i == j ? 1.0 : 0.0)) >= 0.1) return false;
  }
  if (r != nullptr) {  // R = R₂ R₁
    std::copy(first.begin(), first.end(), r);
    cblas_dtrmm(CblasColMajor, CblasLeft, CblasUpper, CblasNoTrans, CblasNonUnit, cols, cols, 1.0, g.data(),
                cols, r, cols);
  }
  return true;
}

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
  w.copy.assign(w.y.begin(), w.y.end());
  if (!cholesky_qr2(w.y.data(), m, l, nullptr, w.g, w.first)) {
    w.y.swap(w.copy);
    orthonormalize(w.y, m, l, w.tau);
  }
  // Bᵀ = Aᵀ Q (n × l; B = Qᵀ A), then B's SVD: from Bᵀ = Q_B R and R = U_R S V_Rᵀ, B = V_R S (Q_B U_R)ᵀ,
  // so U_B = V_R and B's right singular vectors are Q_B U_R (LAPACK's SVD of a wide l × n
  // matrix spends most of its time in a level-2 LQ). Where CholeskyQR2 cannot hold, dgesdd of B.
  w.b.resize(size(n * l));
  cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, n, l, m, 1.0, a.data(), m, w.y.data(), m,
              0.0, w.b.data(), n);
  for (const double x : w.b) r.captured += x * x;
  w.copy.assign(w.b.begin(), w.b.end());
  w.ub.resize(size(l * l));
  w.s.resize(size(l));
  w.vt.resize(size(std::max(l * n, l * l)));
  w.rb.resize(size(l * l));
  r.u.resize(size(m * r.k));
  r.v.resize(size(n * r.k));
  if (cholesky_qr2(w.b.data(), n, l, w.rb.data(), w.g, w.first)) {
    // R = U_R S V_Rᵀ: U_R into ub, V_Rᵀ into vt (l × l).
    check_lapack(LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', l, l, w.rb.data(), l, w.s.data(), w.ub.data(), l,
                                w.vt.data(), l),
                 "dgesdd", l, l);
    // U = Q V_R[:, :k] (V_R = (V_Rᵀ)ᵀ); V = Q_B U_R[:, :k].
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, m, r.k, l, 1.0, w.y.data(), m, w.vt.data(), l,
                0.0, r.u.data(), m);
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, r.k, l, 1.0, w.b.data(), n, w.ub.data(), l,
                0.0, r.v.data(), n);
  } else {
    // B (l × n) from Bᵀ, its SVD by LAPACK, U = Q U_B.
    for (i64 j = 0; j < n; ++j)
      for (i64 i = 0; i < l; ++i) w.b[size(j * l + i)] = w.copy[size(i * n + j)];
    check_lapack(LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', l, n, w.b.data(), l, w.s.data(), w.ub.data(), l,
                                w.vt.data(), l),
                 "dgesdd", l, n);
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, r.k, l, 1.0, w.y.data(), m, w.ub.data(), l,
                0.0, r.u.data(), m);
    for (i64 c = 0; c < r.k; ++c)
      for (i64 j = 0; j < n; ++j) r.v[size(c * n + j)] = w.vt[size(j * l + c)];
  }
  r.s.assign(w.s.begin(), w.s.begin() + r.k);
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
