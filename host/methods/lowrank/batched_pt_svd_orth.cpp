// The batched PT-SVD's orthonormalisation (batched_pt_svd.hpp): CholeskyQR2's two rounds on the
// backend, batched, its verdicts taken on the device or on the host, Householder QR where it does
// not hold.
#include <algorithm>
#include <vector>

#include "methods/lowrank/batched_pt_svd_parts.hpp"

namespace revmerge {

using i64 = std::int64_t;
using batched_pt_svd_parts::doubles;

namespace batched_pt_svd_parts {

void r_of_rounds(const double* r1, const double* r2, i64 l, double* r) {
  for (i64 j = 0; j < l; ++j)
    for (i64 i = 0; i < l; ++i) {
      double sum = 0;
      if (i <= j)
        for (i64 p = i; p <= j; ++p) sum += r2[p * l + i] * r1[j * l + p];
      r[j * l + i] = sum;
    }
}

}  // namespace batched_pt_svd_parts

// CholeskyQR2's two rounds for every rows × l matrix of the batch at `x`, which stays untouched:
// R₁ = chol(XᵀX), X₁ = X R₁⁻¹ (into b.w), R₂ = chol(X₁ᵀX₁) and R₂⁻¹ — GEMMs and l × l
// factorizations, batched. R₁ and R₂ stay in b.factors (then R₂⁻¹), the info words in the
// scalars. Q = X₁ R₂⁻¹ where it held: R₂ ≈ I (then Q is orthonormal to rounding).
void BatchedPtSvd::cholesky_rounds(Batch& b, const double* x, const Shape& s, i64 rows) {
  const i64 T = s.tasks, l = s.l, ll = l * l;
  auto* factors = static_cast<double*>(b.factors.data());  // R₁ (T), R₂ (T), R⁻¹ (T)
  double* inverse = factors + 2 * T * ll;
  const Scalars sc(b.scalars, T);
  auto* w = static_cast<double*>(b.w.data());
  for (int pass = 0; pass < 2; ++pass) {
    const double* src = pass == 0 ? x : w;
    double* g = factors + pass * T * ll;
    gemm(Op::transpose, l, l, rows, src, rows, rows * l, src, rows, rows * l, g, l, ll, T);
    be_.cholesky_inverse_f64(g, inverse, l, T, sc.infos + pass * T, stream_);
    if (pass == 0) gemm(Op::none, rows, l, l, x, rows, rows * l, inverse, l, ll, w, rows, rows * l, T);
  }
  counts_.orthonormalized += T;
}

// The module's pass with no host decision: every step's CholeskyQR2 verdict goes into the
// device's held flags, and Q = X₁ R₂⁻¹ is taken for every task. A task whose flag is cleared
// anywhere is redone afterwards on its own (run_batch_checked).
void BatchedPtSvd::orthonormalize_on_device(Batch& b, double* x, const Shape& s, i64 rows) {
  const i64 T = s.tasks, l = s.l, ll = l * l;
  cholesky_rounds(b, x, s, rows);
  auto* factors = static_cast<double*>(b.factors.data());
  const Scalars sc(b.scalars, T);
  be_.cholesky_qr_verdict_f64(factors + T * ll, sc.infos, l, T, 0.1, sc.held, stream_);
  gemm(Op::none, rows, l, l, static_cast<const double*>(b.w.data()), rows, rows * l, factors + 2 * T * ll, l,
       ll, x, rows, rows * l, T);
}

// Replaces each rows × l matrix of the batch at `x` by an orthonormal basis of its range,
// deciding on the host after each step: CholeskyQR2 (cholesky_rounds) where it holds, and
// where a factorization fails (a zero Δ) or R₂ strays from I by 0.1 or more (a rank-deficient
// sketch may), Householder QR from the untouched X. Where it holds on a rank-deficient X, its
// trailing columns are orthonormalised rounding and the range of X is still kept: as good a
// basis for the randomized SVD. With `r_out`, each task's R (X = Q R, l × l column-major)
// comes back to the host.
void BatchedPtSvd::orthonormalize(Batch& b, double* x, const Shape& s, i64 rows,
                                  std::vector<double>* r_out) {
  const i64 T = s.tasks, l = s.l, ll = l * l;
  cholesky_rounds(b, x, s, rows);
  auto* factors = static_cast<double*>(b.factors.data());
  double* inverse = factors + 2 * T * ll;
  const Scalars sc(b.scalars, T);
  auto* w = static_cast<double*>(b.w.data());
  // Both factors and the verdicts to the host; X is still untouched.
  std::vector<double> h_factors(static_cast<std::size_t>(2 * T * ll));
  std::vector<int> h_held(static_cast<std::size_t>(T), 1);
  auto* held_flags = sc.held;
  be_.upload(held_flags, h_held.data(), h_held.size() * sizeof(int), stream_);
  be_.cholesky_qr_verdict_f64(factors + T * ll, sc.infos, l, T, 0.1, held_flags, stream_);
  to_host(h_factors.data(), factors, doubles(2 * T * ll));
  to_host(h_held.data(), held_flags, h_held.size() * sizeof(int));
  be_.synchronize(stream_);
  const bool all_held = std::all_of(h_held.begin(), h_held.end(), [](int h) { return h != 0; });
  // Q = X₁ R₂⁻¹ where CholeskyQR2 held: one batched GEMM when it held everywhere.
  if (all_held) {
    gemm(Op::none, rows, l, l, w, rows, rows * l, inverse, l, ll, x, rows, rows * l, T);
  } else {
    for (i64 t = 0; t < T; ++t)
      if (h_held[t])
        gemm(Op::none, rows, l, l, w + t * rows * l, rows, 0, inverse + t * ll, l, 0,
             x + t * rows * l, rows, 0, 1);
  }
  if (r_out) r_out->assign(static_cast<std::size_t>(T * ll), 0.0);
  for (i64 t = 0; t < T; ++t) {
    double* r = r_out ? r_out->data() + t * ll : nullptr;
    if (!h_held[t]) {
      be_.householder_qr_f64(x + t * rows * l, rows, l, r, stream_);
      ++counts_.householder;
      continue;
    }
    if (r) batched_pt_svd_parts::r_of_rounds(h_factors.data() + t * ll, h_factors.data() + (T + t) * ll, l, r);
  }
}

}  // namespace revmerge
