#include "methods/store/truncation.hpp"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>

#include "backend/lapack_check.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

std::vector<double> widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

double dot(const std::vector<double>& x, const std::vector<double>& y) {
  double s = 0;
  for (std::size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
  return s;
}

}  // namespace

std::vector<double> symmetric_eigen(std::vector<double>& m, i64 r) {
  std::vector<double> w(static_cast<std::size_t>(r));
  if (r == 0) return w;
  check_lapack(LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', static_cast<int>(r), m.data(),
                              static_cast<int>(r), w.data()),
               "dsyevd", r, r);
  return w;
}

void mirror_upper(std::vector<double>& m, i64 r) {
  for (i64 i = 0; i < r; ++i)
    for (i64 j = 0; j < i; ++j) m[i * r + j] = m[j * r + i];
}

WideFactors widen_factors(const TaskFactors& tf) { return {widen(tf.a), widen(tf.b)}; }

TaskTruncation task_truncation(const TaskFactors& tf, i64 out, i64 in) {
  return task_truncation(tf, tf.rank > 0 ? widen_factors(tf) : WideFactors{}, out, in);
}

TaskTruncation task_truncation(const TaskFactors& tf, const WideFactors& wide, i64 out, i64 in) {
  const i64 r = tf.rank;
  std::vector<double> aat(static_cast<std::size_t>(r * r), 0.0), btb(aat.size(), 0.0);
  if (r > 0) {
    const auto &a = wide.a, &b = wide.b;
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, r, in, 1.0, a.data(), in, 0.0, aat.data(), r);
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, r, out, tf.scale * tf.scale, b.data(), r, 0.0, btb.data(),
                r);
    mirror_upper(aat, r);
    mirror_upper(btb, r);
  }
  return task_truncation(tf, out, in, std::move(aat), std::move(btb));
}

TaskTruncation task_truncation(const TaskFactors& tf, i64 out, i64 in, std::vector<double> aat,
                               std::vector<double> btb) {
  const i64 r = tf.rank;
  TaskTruncation t;
  t.r = r, t.in = in, t.out = out;
  t.sigma_sq.assign(static_cast<std::size_t>(r), 0.0);
  t.left.assign(static_cast<std::size_t>(r * r), 0.0);
  t.right.assign(static_cast<std::size_t>(r * r), 0.0);
  t.aat = std::move(aat);
  t.btb = std::move(btb);
  if (r == 0) return t;
  t.norm_sq = std::max(dot(t.aat, t.btb), 0.0);
  auto u = t.aat;
  const auto lambda = symmetric_eigen(u, r);
  const double floor = lambda.back() * 1e-14;
  std::vector<double> root(static_cast<std::size_t>(r), 0.0), inv_root(root);
  for (i64 i = 0; i < r; ++i)
    if (lambda[i] > floor && lambda[i] > 0) root[i] = std::sqrt(lambda[i]), inv_root[i] = 1 / root[i];
  // S = Λ^½ Uᵀ (s²BᵀB) U Λ^½.
  std::vector<double> bu(static_cast<std::size_t>(r * r)), s(bu.size());
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, r, r, 1.0, t.btb.data(), r, u.data(), r, 0.0,
              bu.data(), r);
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, r, r, 1.0, u.data(), r, bu.data(), r, 0.0,
              s.data(), r);
  for (i64 i = 0; i < r; ++i)
    for (i64 j = 0; j < r; ++j) s[i * r + j] *= root[i] * root[j];
  auto w = s;
  const auto sigma = symmetric_eigen(w, r);
  // Descending order: column c of the transforms is eigenvector r − 1 − c of S.
  for (i64 c = 0; c < r; ++c) t.sigma_sq[c] = std::max(sigma[r - 1 - c], 0.0);
  // left = s U Λ^½ W (columns reversed), right = Wᵀ Λ^-½ Uᵀ (rows reversed).
  for (i64 i = 0; i < r; ++i)
    for (i64 c = 0; c < r; ++c) {
      double l = 0, rt = 0;
      for (i64 q = 0; q < r; ++q) {
        const double wq = w[q * r + (r - 1 - c)];
        l += u[i * r + q] * root[q] * wq;
        rt += wq * inv_root[q] * u[i * r + q];
      }
      t.left[i * r + c] = tf.scale * l;
      t.right[c * r + i] = rt;
    }
  return t;
}

void truncated_factors(const TaskTruncation& t, const TaskFactors& tf, i64 k, std::vector<float>& b,
                       std::vector<float>& a) {
  truncated_factors(t, k > 0 ? widen_factors(tf) : WideFactors{}, k, b, a);
}

void truncated_factors(const TaskTruncation& t, const WideFactors& wide, i64 k, std::vector<float>& b,
                       std::vector<float>& a) {
  const i64 r = t.r, in = t.in, out = t.out;
  b.assign(static_cast<std::size_t>(out * k), 0.0f);
  a.assign(static_cast<std::size_t>(k * in), 0.0f);
  if (k == 0) return;
  const auto &bw = wide.b, &aw = wide.a;
  std::vector<double> bk(static_cast<std::size_t>(out * k)), ak(static_cast<std::size_t>(k * in));
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, k, r, 1.0, bw.data(), r, t.left.data(), r,
              0.0, bk.data(), k);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, in, r, 1.0, t.right.data(), r, aw.data(), in,
              0.0, ak.data(), in);
  std::copy(bk.begin(), bk.end(), b.begin());
  std::copy(ak.begin(), ak.end(), a.begin());
}

void round_to_storage(std::vector<float>& v, DType storage) {
  if (storage == DType::F32 || v.empty()) return;
  std::vector<std::byte> bytes(v.size() * dtype_size(storage));
  convert_from_f32(v.data(), storage, bytes.data(), v.size());
  convert_to_f32(storage, bytes.data(), v.data(), v.size());
}

double truncation_error_sq(const TaskFactors& tf, i64 out, i64 in, double norm_sq,
                           const std::vector<float>& b, const std::vector<float>& a, i64 k) {
  if (k == 0) return norm_sq;
  return truncation_error_sq(tf, widen_factors(tf), out, in, norm_sq, b, a, k);
}

double truncation_error_sq(const TaskFactors& tf, const WideFactors& wide, i64 out, i64 in, double norm_sq,
                           const std::vector<float>& b, const std::vector<float>& a, i64 k) {
  if (k == 0) return norm_sq;
  const i64 r = tf.rank;
  const auto bk = widen(b), ak = widen(a);
  const auto &bw = wide.b, &aw = wide.a;
  // ‖B'A'‖² = ⟨B'ᵀB', A'A'ᵀ⟩.
  std::vector<double> gb(static_cast<std::size_t>(k * k)), ga(gb.size());
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, k, out, 1.0, bk.data(), k, 0.0, gb.data(), k);
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, k, in, 1.0, ak.data(), in, 0.0, ga.data(), k);
  mirror_upper(gb, k);
  mirror_upper(ga, k);
  // ⟨B'A', sBA⟩ = ⟨s B'ᵀB, A'Aᵀ⟩ (k × r each).
  std::vector<double> cb(static_cast<std::size_t>(k * r)), ca(cb.size());
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, r, out, tf.scale, bk.data(), k, bw.data(), r, 0.0,
              cb.data(), r);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, k, r, in, 1.0, ak.data(), in, aw.data(), in, 0.0,
              ca.data(), r);
  return std::max(dot(gb, ga) - 2 * dot(cb, ca) + norm_sq, 0.0);
}

}  // namespace revmerge
