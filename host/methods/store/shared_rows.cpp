#include "methods/store/shared_rows.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "backend/lapack_check.hpp"
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

// The symmetric R × R `m`'s eigenvalues (ascending, returned) and eigenvectors (m's columns),
// on the backend.
std::vector<double> backend_eigen(Backend& be, Stream st, std::vector<double>& m, i64 R) {
  const std::size_t bytes = m.size() * sizeof(double);
  DeviceBuffer a = be.allocate(bytes), w = be.allocate(static_cast<std::size_t>(R) * sizeof(double)),
               status = be.allocate(sizeof(int));
  be.upload(a.data(), m.data(), bytes, st);
  be.symmetric_eigen_f64(static_cast<double*>(a.data()), R, static_cast<double*>(w.data()),
                         static_cast<int*>(status.data()), st);
  std::vector<double> lambda(static_cast<std::size_t>(R));
  int info = 0;
  be.download(m.data(), a.data(), bytes, st);
  be.download(lambda.data(), w.data(), lambda.size() * sizeof(double), st);
  be.download(&info, status.data(), sizeof(int), st);
  be.synchronize(st);
  check_lapack(info, "the shared basis's symmetric eigensolve", R, R);
  return lambda;
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
  // so its products go block by block (R²r each, not R³).
  std::vector<double> SL(static_cast<std::size_t>(R * R)), G(SL.size());
  for (std::size_t i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    if (r == 0) continue;
    const double* Li = L.data() + o * R + o;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, r, r, 1.0, S.data() + o, R, Li, R, 0.0,
                SL.data() + o, R);
  }
  for (std::size_t i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    if (r == 0) continue;
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, R, r, 1.0, L.data() + o * R + o, R, SL.data() + o * R, R,
                0.0, G.data() + o * R, R);
  }
  auto W = G;
  const auto lam = backend_eigen(be, stream, W, R);
  const double floor = lam.back() * 1e-14;
  std::vector<double> wd(static_cast<std::size_t>(R * R));  // W Λ^-½, columns descending
  for (i64 c = 0; c < R; ++c) {
    const double l = lam[R - 1 - c];
    s.lambda[c] = std::max(l, 0.0);
    const double inv = l > floor && l > 0 ? 1 / std::sqrt(l) : 0.0;
    for (i64 x = 0; x < R; ++x) wd[x * R + c] = W[x * R + (R - 1 - c)] * inv;
  }
  for (std::size_t i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    if (r == 0) continue;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, R, r, 1.0, L.data() + o * R + o, R, wd.data() + o * R, R,
                0.0, s.to_basis.data() + o * R, R);
  }
  if (!errors) return s;
  // A V = S · to_basis; task i's share of direction k: (A_i v_k)ᵀ M_i (A_i v_k).
  std::vector<double> P(static_cast<std::size_t>(R * R));
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, R, R, 1.0, S.data(), R, s.to_basis.data(), R, 0.0,
              P.data(), R);
  for (std::size_t i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    if (r == 0) continue;
    std::vector<double> mp(static_cast<std::size_t>(r * R));  // M_i (A_i V)
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, R, r, 1.0, M[i].data(), r, P.data() + o * R, R, 0.0,
                mp.data(), R);
    std::vector<double> share(static_cast<std::size_t>(R), 0.0);
    for (i64 x = 0; x < r; ++x)
      for (i64 k = 0; k < R; ++k) share[k] += P[(o + x) * R + k] * mp[x * R + k];
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
