#include "methods/lowrank/refactor.hpp"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <string>

#include "backend/lapack_check.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Column-major m × k matrix `x` (m ≥ 1) replaced by its thin Q (m × min(m, k)); returns the
// upper-triangular R (min(m, k) × k, column-major).
std::vector<double> thin_qr(std::vector<double>& x, i64 m, i64 k) {
  const i64 q = std::min(m, k);
  std::vector<double> tau(static_cast<std::size_t>(std::max<i64>(q, 1)));
  check_lapack(LAPACKE_dgeqrf(LAPACK_COL_MAJOR, m, k, x.data(), m, tau.data()), "dgeqrf", m, k);
  std::vector<double> r(static_cast<std::size_t>(q * k), 0.0);
  for (i64 c = 0; c < k; ++c)
    for (i64 row = 0; row <= std::min(c, q - 1); ++row) r[c * q + row] = x[c * m + row];
  check_lapack(LAPACKE_dorgqr(LAPACK_COL_MAJOR, m, q, q, x.data(), m, tau.data()), "dorgqr", m, q);
  x.resize(static_cast<std::size_t>(m * q));
  return r;
}

struct Svd {
  std::vector<double> u, s, vt;  // column-major: u m × q, vt q × n
  i64 q = 0;
};

Svd svd(std::vector<double> a, i64 m, i64 n) {
  Svd r;
  r.q = std::min(m, n);
  r.u.resize(static_cast<std::size_t>(m * r.q));
  r.s.resize(static_cast<std::size_t>(r.q));
  r.vt.resize(static_cast<std::size_t>(r.q * n));
  check_lapack(LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', m, n, a.data(), m, r.s.data(), r.u.data(), m,
                            r.vt.data(), r.q),
             "dgesdd", m, n);
  return r;
}

}  // namespace

// ‖Σ c_k B_k A_k‖_F² = ⟨UᵀU, VVᵀ⟩ for U = [c_1B_1 …] (out × K) and V = [A_1; …] (K × in).
double lowrank_norm_sq(const std::vector<LowRankTerm>& terms, i64 out, i64 in) {
  i64 k = 0;
  for (const auto& t : terms) k += t.rank;
  if (k == 0) return 0;
  std::vector<double> u(static_cast<std::size_t>(out * k)), v(static_cast<std::size_t>(k * in));
  i64 at = 0;
  for (const auto& t : terms)
    for (i64 p = 0; p < t.rank; ++p, ++at) {
      for (i64 o = 0; o < out; ++o) u[o * k + at] = t.coefficient * t.b[o * t.rank + p];
      for (i64 i = 0; i < in; ++i) v[at * in + i] = t.a[p * in + i];
    }
  std::vector<double> gu(static_cast<std::size_t>(k * k)), gv(static_cast<std::size_t>(k * k));
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, k, out, 1.0, u.data(), k, u.data(), k,
              0.0, gu.data(), k);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, k, k, in, 1.0, v.data(), in, v.data(), in,
              0.0, gv.data(), k);
  double total = 0;
  for (std::size_t j = 0; j < gu.size(); ++j) total += gu[j] * gv[j];
  return std::max(total, 0.0);
}

LowRankFactors refactor_sum(const std::vector<LowRankTerm>& terms, i64 out, i64 in, i64 rank) {
  i64 k = 0;
  for (const auto& t : terms) k += t.rank;
  LowRankFactors f;
  f.rank = rank;
  f.b.assign(static_cast<std::size_t>(out * rank), 0.0f);
  f.a.assign(static_cast<std::size_t>(rank * in), 0.0f);
  if (k == 0) return f;
  // Stacked factors, column-major: Bs = [c₁B₁ … cₙBₙ] (out × k), Ats = [A₁; …; Aₙ]ᵀ (in × k).
  std::vector<double> bs(static_cast<std::size_t>(out * k)), ats(static_cast<std::size_t>(in * k));
  i64 col = 0;
  for (const auto& t : terms) {
    for (i64 c = 0; c < t.rank; ++c, ++col) {
      for (i64 o = 0; o < out; ++o) bs[col * out + o] = t.coefficient * t.b[o * t.rank + c];
      for (i64 i = 0; i < in; ++i) ats[col * in + i] = t.a[c * in + i];
    }
  }
  const i64 qb = std::min(out, k), qa = std::min(in, k);
  const auto rb = thin_qr(bs, out, k);   // qb × k
  const auto ra = thin_qr(ats, in, k);   // qa × k
  // Column-major throughout: core = R_B R_Aᵀ (qb × qa).
  std::vector<double> core(static_cast<std::size_t>(qb * qa));
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, qb, qa, k, 1.0, rb.data(), qb, ra.data(),
              qa, 0.0, core.data(), qb);
  const auto s = svd(std::move(core), qb, qa);
  f.singular_values = s.s;
  const i64 keep = std::min(rank, s.q);
  if (keep == 0) return f;
  // B' = Q_B U_keep Σ_keep (out × keep) and A'ᵀ = Q_A V_keep (in × keep), both column-major.
  std::vector<double> us(static_cast<std::size_t>(qb * keep));
  for (i64 c = 0; c < keep; ++c)
    for (i64 i = 0; i < qb; ++i) us[c * qb + i] = s.u[c * qb + i] * s.s[c];
  std::vector<double> b(static_cast<std::size_t>(out * keep)), at(static_cast<std::size_t>(in * keep));
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, out, keep, qb, 1.0, bs.data(), out,
              us.data(), qb, 0.0, b.data(), out);
  // V = vtᵀ: vt is s.q × qa with leading dimension s.q.
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, in, keep, qa, 1.0, ats.data(), in,
              s.vt.data(), s.q, 0.0, at.data(), in);
  for (i64 c = 0; c < keep; ++c) {
    for (i64 o = 0; o < out; ++o) f.b[o * rank + c] = static_cast<float>(b[c * out + o]);
    for (i64 x = 0; x < in; ++x) f.a[c * in + x] = static_cast<float>(at[c * in + x]);
  }
  return f;
}

LowRankFactors refactor_dense(std::span<const float> dense, i64 out, i64 in, i64 rank) {
  // Row-major out × in is column-major in × out: the SVD of Dᵀ = V Σ Uᵀ.
  std::vector<double> dt(dense.begin(), dense.end());
  const auto s = svd(std::move(dt), in, out);  // u: in × q (= V), vt: q × out (= Uᵀ)
  LowRankFactors f;
  f.rank = rank;
  f.singular_values = s.s;
  f.b.assign(static_cast<std::size_t>(out * rank), 0.0f);
  f.a.assign(static_cast<std::size_t>(rank * in), 0.0f);
  for (i64 c = 0; c < std::min(rank, s.q); ++c) {
    for (i64 o = 0; o < out; ++o)
      f.b[o * rank + c] = static_cast<float>(s.vt[o * s.q + c] * s.s[c]);
    for (i64 x = 0; x < in; ++x) f.a[c * in + x] = static_cast<float>(s.u[c * in + x]);
  }
  return f;
}

}  // namespace revmerge
