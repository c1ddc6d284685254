#include "methods/store/shared_rows.hpp"

#include <algorithm>
#include <cmath>

#include "backend/lapack_check.hpp"
#include "core/tiled_transpose.hpp"
#include "methods/store/backend_values.hpp"
#include "methods/store/truncation.hpp"

namespace revmerge {

using i64 = std::int64_t;

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

SharedRowsParts shared_rows_parts(Backend& be, Stream st, const SharedRows& s, const std::vector<TaskFactors>& f,
                                  i64 k, DType storage) {
  const i64 R = s.total_rank, in = s.in, out = s.out, n = static_cast<i64>(f.size());
  const auto count = [](i64 rows, i64 cols) { return static_cast<std::size_t>(rows * cols); };
  std::vector<i64> first(f.size() + 1, 0);  // task i's rows of A's stack, columns of the B_i's
  for (std::size_t i = 0; i < f.size(); ++i) first[i + 1] = first[i] + f[i].rank;
  SharedRowsParts p;
  // The tasks' A_i stacked (R × in) and B_i's packed (out × r_i each, from out · first[i]), f64.
  std::vector<double> stage_a, stage_b, stage_map, stage_vt;
  DeviceBuffer a, b, map, vt = allocate_f64(be, count(k, in));
  fill_on_backend(be, st, a, count(R, in), stage_a, [&](double* x) {
    for (std::size_t i = 0; i < f.size(); ++i) std::copy_n(f[i].a.begin(), f[i].rank * in, x + first[i] * in);
  });
  fill_on_backend(be, st, b, count(out, R), stage_b, [&](double* x) {
    for (std::size_t i = 0; i < f.size(); ++i) std::copy_n(f[i].b.begin(), out * f[i].rank, x + out * first[i]);
  });
  copy_to_backend(be, st, map, s.to_basis, stage_map);
  // Vᵀ (k × in) = to_basis[:, :k]ᵀ A, rounded as stored.
  be.gemm_f64_rows(Op::transpose, Op::none, k, in, R, 1.0, f64(map), R, f64(a), in, f64(vt), in, st);
  std::vector<double> vt_staging;
  const double* vt_host = host_values(be, st, vt, count(k, in), vt_staging);
  be.synchronize(st);
  p.basis_t.assign(vt_host, vt_host + count(k, in));
  round_to_storage(p.basis_t, storage);
  // Per task A_i V (r × k), then s B_i (A_i V) (out × k), with V as rounded.
  fill_on_backend(be, st, vt, count(k, in), stage_vt,
                  [&](double* x) { std::copy(p.basis_t.begin(), p.basis_t.end(), x); });
  const std::size_t per = count(out, k);
  DeviceBuffer av = allocate_f64(be, count(R, k)), bt = allocate_f64(be, per * f.size());
  for (i64 i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    double* bt_i = f64(bt) + i * per;
    if (r == 0) {
      be.fill(bt_i, 0, per * sizeof(double), st);
      continue;
    }
    be.gemm_f64_rows(Op::none, Op::transpose, r, k, in, 1.0, f64(a) + o * in, in, f64(vt), in, f64(av) + o * k, k,
                     st);
    be.gemm_f64_rows(Op::none, Op::none, out, k, r, f[i].scale, f64(b) + out * o, r, f64(av) + o * k, k, bt_i, k,
                     st);
  }
  std::vector<double> bt_staging;
  const double* bt_host = host_values(be, st, bt, per * f.size(), bt_staging);
  be.synchronize(st);
  p.task_b.resize(f.size());
  for (std::size_t i = 0; i < f.size(); ++i) {
    p.task_b[i].assign(bt_host + i * per, bt_host + (i + 1) * per);
    round_to_storage(p.task_b[i], storage);
  }
  // The errors of the parts as rounded: VᵀV once (k × k), per task B̃ᵀB̃ (k × k), s B̃ᵀB_i and
  // Vᵀ A_iᵀ (k × r each); B̃ (f64) and its transpose (f32 rows, for the Gram) from the rounded values.
  std::vector<float> stage_v32, stage_t32;
  std::vector<double> stage_bt;
  DeviceBuffer v32, t32;
  fill_on_backend(be, st, v32, count(k, in), stage_v32,
                  [&](float* x) { std::copy(p.basis_t.begin(), p.basis_t.end(), x); });
  fill_on_backend(be, st, t32, per * f.size(), stage_t32, [&](float* x) {
    for (std::size_t i = 0; i < f.size(); ++i)
      transpose_tiled(x + i * per, out, p.task_b[i].data(), k, out, k);
  });
  fill_on_backend(be, st, bt, per * f.size(), stage_bt, [&](double* x) {
    for (std::size_t i = 0; i < f.size(); ++i) std::copy(p.task_b[i].begin(), p.task_b[i].end(), x + i * per);
  });
  const std::size_t kk = count(k, k);
  DeviceBuffer ga = allocate_f64(be, kk), gb = allocate_f64(be, kk * f.size()), cb = allocate_f64(be, count(k, R)),
               ca = allocate_f64(be, count(k, R));
  be.gram_f64(v32.f32(), k, in, f64(ga), st);
  for (i64 i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    be.gram_f64(t32.f32() + i * per, k, out, f64(gb) + i * kk, st);
    if (r == 0) continue;
    be.gemm_f64_rows(Op::transpose, Op::none, k, r, out, f[i].scale, f64(bt) + i * per, k, f64(b) + out * o, r,
                     f64(cb) + k * o, r, st);
    be.gemm_f64_rows(Op::none, Op::transpose, k, r, in, 1.0, f64(vt), in, f64(a) + o * in, in, f64(ca) + k * o, r,
                     st);
  }
  std::vector<double> ga_h(kk), gb_h(kk * f.size()), cb_h(count(k, R)), ca_h(count(k, R));
  be.download(ga_h.data(), ga.data(), ga_h.size() * sizeof(double), st);
  be.download(gb_h.data(), gb.data(), gb_h.size() * sizeof(double), st);
  be.download(cb_h.data(), cb.data(), cb_h.size() * sizeof(double), st);
  be.download(ca_h.data(), ca.data(), ca_h.size() * sizeof(double), st);
  be.synchronize(st);
  for (i64 i = 0; i < n; ++i) {
    double whole = 0, cross = 0;
    for (std::size_t e = 0; e < kk; ++e) whole += gb_h[i * kk + e] * ga_h[e];
    for (i64 e = 0; e < k * f[i].rank; ++e) cross += cb_h[k * first[i] + e] * ca_h[k * first[i] + e];
    p.error_sq.push_back(std::max(whole - 2 * cross + s.norm_sq[i], 0.0));
  }
  return p;
}

}  // namespace revmerge
