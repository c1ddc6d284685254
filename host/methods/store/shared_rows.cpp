#include "methods/store/shared_rows.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "backend/lapack_check.hpp"
#include "methods/store/backend_values.hpp"
#include "methods/store/truncation.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// The tasks' A_i stacked (R × in), f64.
std::vector<double> stacked_a(const std::vector<TaskFactors>& f, i64 in) {
  std::vector<double> a;
  for (const auto& tf : f) a.insert(a.end(), tf.a.begin(), tf.a.begin() + tf.rank * in);
  return a;
}

}  // namespace

SharedRows shared_rows(Backend& be, Stream stream, const std::vector<TaskFactors>& f,
                       const std::vector<double>& gram, const std::vector<double>& other, i64 out, i64 in,
                       bool errors) {
  const auto n = f.size();
  SharedRows s;
  s.in = in, s.out = out;
  std::vector<i64> first(n);
  i64 R = 0;
  for (std::size_t i = 0; i < n; ++i) first[i] = R, R += f[i].rank;
  s.total_rank = R;
  s.error_sq.assign(n, std::vector<double>(static_cast<std::size_t>(R), 0.0));
  s.norm_sq.assign(n, 0.0);
  s.lambda.assign(static_cast<std::size_t>(R), 0.0);
  s.to_basis.assign(static_cast<std::size_t>(R * R), 0.0);
  if (R == 0) return s;
  // S = A Aᵀ (R × R) and per task M_i = s²B_iᵀB_i (from the other side's Gram) with a square
  // root L_i = Q D^½.
  const auto& S = gram;
  s.gram = S;
  std::vector<double> L(static_cast<std::size_t>(R * R), 0.0);  // block diagonal
  std::vector<std::vector<double>> M(n);
  for (std::size_t i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    M[i].assign(static_cast<std::size_t>(r * r), 0.0);
    if (r == 0) continue;
    const double s2 = f[i].scale * f[i].scale;
    for (i64 x = 0; x < r; ++x)
      for (i64 y = 0; y < r; ++y) M[i][x * r + y] = s2 * other[(o + x) * R + o + y];
    auto q = M[i];
    const auto d = symmetric_eigen(q, r);
    for (i64 x = 0; x < r; ++x)
      for (i64 y = 0; y < r; ++y) L[(o + x) * R + o + y] = q[x * r + y] * std::sqrt(std::max(d[y], 0.0));
    for (i64 x = 0; x < r; ++x)
      for (i64 y = 0; y < r; ++y) s.norm_sq[i] += M[i][x * r + y] * S[(o + x) * R + o + y];
  }
  // G = Lᵀ S L = W Λ Wᵀ; V = Aᵀ L W Λ^-½ has orthonormal columns (Λ > 0). L is block diagonal,
  // so its products go block by block (R²r each, not R³). They run on the backend, as does the
  // eigensolve; the host scales W's columns.
  std::vector<double> stage_s, stage_l;
  DeviceBuffer ds, dl;
  copy_to_backend(be, stream, ds, S, stage_s);
  copy_to_backend(be, stream, dl, L, stage_l);
  DeviceBuffer sl = allocate_f64(be, L.size()), g = allocate_f64(be, L.size()),
               w = allocate_f64(be, static_cast<std::size_t>(R)), status = be.allocate(sizeof(int));
  for (std::size_t i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    if (r == 0) continue;
    be.gemm_f64_rows(Op::none, Op::none, R, r, r, 1.0, f64(ds) + o, R, f64(dl) + o * R + o, R, f64(sl) + o, R,
                     stream);
  }
  for (std::size_t i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    if (r == 0) continue;
    be.gemm_f64_rows(Op::transpose, Op::none, r, R, r, 1.0, f64(dl) + o * R + o, R, f64(sl) + o * R, R,
                     f64(g) + o * R, R, stream);
  }
  be.symmetric_eigen_f64(f64(g), R, f64(w), static_cast<int*>(status.data()), stream);
  std::vector<double> W(L.size()), lam(static_cast<std::size_t>(R));
  int info = 0;
  be.download(W.data(), g.data(), W.size() * sizeof(double), stream);
  be.download(lam.data(), w.data(), lam.size() * sizeof(double), stream);
  be.download(&info, status.data(), sizeof(int), stream);
  be.synchronize(stream);
  check_lapack(info, "the shared basis's symmetric eigensolve", R, R);
  const double floor = lam.back() * 1e-14;
  std::vector<double> stage_wd;
  DeviceBuffer wd;  // W Λ^-½, columns descending
  fill_on_backend(be, stream, wd, W.size(), stage_wd, [&](double* x) {
    for (i64 c = 0; c < R; ++c) {
      const double l = lam[R - 1 - c];
      s.lambda[c] = std::max(l, 0.0);
      const double inv = l > floor && l > 0 ? 1 / std::sqrt(l) : 0.0;
      for (i64 y = 0; y < R; ++y) x[y * R + c] = W[y * R + (R - 1 - c)] * inv;
    }
  });
  DeviceBuffer to_basis = allocate_f64(be, L.size());
  for (std::size_t i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    if (r == 0) continue;  // no rows
    be.gemm_f64_rows(Op::none, Op::none, r, R, r, 1.0, f64(dl) + o * R + o, R, f64(wd) + o * R, R,
                     f64(to_basis) + o * R, R, stream);
  }
  be.download(s.to_basis.data(), to_basis.data(), s.to_basis.size() * sizeof(double), stream);
  if (!errors) {
    be.synchronize(stream);
    return s;
  }
  // A V = S · to_basis; task i's share of direction k: (A_i v_k)ᵀ M_i (A_i v_k), M_i (A_i V) made
  // for every task into one R × R.
  std::vector<std::size_t> m_first(n + 1, 0);  // task i's M_i (r_i × r_i) packed from m_first[i]
  for (std::size_t i = 0; i < n; ++i) m_first[i + 1] = m_first[i] + M[i].size();
  std::vector<double> stage_m;
  DeviceBuffer dm, p = allocate_f64(be, L.size()), mp = allocate_f64(be, L.size());
  fill_on_backend(be, stream, dm, m_first[n], stage_m, [&](double* x) {
    for (std::size_t i = 0; i < n; ++i) std::copy(M[i].begin(), M[i].end(), x + m_first[i]);
  });
  be.gemm_f64_rows(Op::none, Op::none, R, R, R, 1.0, f64(ds), R, f64(to_basis), R, f64(p), R, stream);
  for (std::size_t i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    if (r == 0) continue;
    be.gemm_f64_rows(Op::none, Op::none, r, R, r, 1.0, f64(dm) + m_first[i], r, f64(p) + o * R, R,
                     f64(mp) + o * R, R, stream);
  }
  std::vector<double> P(L.size()), MP(L.size());
  be.download(P.data(), p.data(), P.size() * sizeof(double), stream);
  be.download(MP.data(), mp.data(), MP.size() * sizeof(double), stream);
  be.synchronize(stream);
  for (std::size_t i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    if (r == 0) continue;
    std::vector<double> share(static_cast<std::size_t>(R), 0.0);
    for (i64 x = 0; x < r; ++x)
      for (i64 k = 0; k < R; ++k) share[k] += P[(o + x) * R + k] * MP[(o + x) * R + k];
    double kept = 0;
    for (i64 k = 0; k < R; ++k) {
      kept += share[k];
      s.error_sq[i][k] = std::max(s.norm_sq[i] - kept, 0.0);
    }
  }
  return s;
}

void shared_rows_factors(const SharedRows& s, const std::vector<TaskFactors>& f, i64 k, DType storage,
                         std::vector<float>& basis_t, std::vector<std::vector<float>>& task_b) {
  const i64 R = s.total_rank, in = s.in, out = s.out;
  const auto a = stacked_a(f, in);
  // Vᵀ (k × in) = to_basis[:, :k]ᵀ A.
  std::vector<double> vt(static_cast<std::size_t>(k * in));
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, in, R, 1.0, s.to_basis.data(), R, a.data(), in, 0.0,
              vt.data(), in);
  basis_t.assign(vt.begin(), vt.end());
  round_to_storage(basis_t, storage);
  const std::vector<double> v(basis_t.begin(), basis_t.end());
  task_b.assign(f.size(), {});
  for (std::size_t i = 0; i < f.size(); ++i) {
    const i64 r = f[i].rank;
    std::vector<double> p(static_cast<std::size_t>(r * k)), bt(static_cast<std::size_t>(out * k));
    const std::vector<double> ai(f[i].a.begin(), f[i].a.begin() + r * in), bi(f[i].b.begin(), f[i].b.end());
    if (r > 0) {
      // A_i V (r × k), then s B_i (A_i V).
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, k, in, 1.0, ai.data(), in, v.data(), in, 0.0,
                  p.data(), k);
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, k, r, f[i].scale, bi.data(), r, p.data(), k,
                  0.0, bt.data(), k);
    }
    task_b[i].assign(bt.begin(), bt.end());
    round_to_storage(task_b[i], storage);
  }
}

}  // namespace revmerge
