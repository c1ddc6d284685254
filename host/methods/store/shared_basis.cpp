#include "methods/store/shared_basis.hpp"

#include <cblas.h>

#include <algorithm>

#include "core/tiled_transpose.hpp"
#include "methods/store/backend_values.hpp"
#include "methods/store/truncation.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

std::vector<i64> first_rows(const std::vector<TaskFactors>& f) {
  std::vector<i64> first;
  i64 total = 0;
  for (const auto& tf : f) first.push_back(total), total += tf.rank;
  return first;
}

// The tasks' A_i stacked (R × in) or B_iᵀ stacked (R × out) into x, f64; B scaled by s_i if asked.
void stacked(double* x, const std::vector<TaskFactors>& f, i64 cols, bool b_side, bool scaled) {
  for (const auto& tf : f) {
    const i64 r = tf.rank;
    const double s = scaled ? tf.scale : 1.0;
    if (b_side)  // B (cols × r) as r rows
      transpose_tiled(x, cols, tf.b.data(), r, cols, r, [s](float v) { return s * v; });
    else
      std::copy(tf.a.begin(), tf.a.begin() + r * cols, x);
    x += r * cols;
  }
}

}  // namespace

SharedBasis shared_basis(Backend& be, Stream stream, const std::vector<TaskFactors>& f, const ModuleGrams& g,
                         i64 out, i64 in, bool errors) {
  SharedBasis s;
  s.rows = shared_rows(be, stream, f, g.a, g.b, out, in, errors);
  // The transposed tasks ΔW_iᵀ = s_i A_iᵀ B_iᵀ: their row basis is the deltas' column basis,
  // found from the same Grams with the sides' roles swapped.
  s.cols = shared_rows(be, stream, f, g.b, g.a, in, out, errors);
  return s;
}

std::vector<std::vector<double>> shared_basis_errors(Backend& be, Stream st, const SharedBasis& s,
                                                     const std::vector<TaskFactors>& f, const std::vector<i64>& kv,
                                                     const std::vector<i64>& ku) {
  const i64 R = s.rows.total_rank, n = static_cast<i64>(f.size());
  std::vector<std::vector<double>> out(kv.size() * ku.size(), std::vector<double>(f.size(), 0.0));
  if (R == 0 || kv.empty() || ku.empty()) return out;
  const i64 mv = *std::max_element(kv.begin(), kv.end()), mu = *std::max_element(ku.begin(), ku.end());
  const auto first = first_rows(f);
  // T_i[:mu, :mv] = (C_uᵀ Sb[:, i]) (s_i Sa[i, :] C_v), C the to_basis maps, Sa = A Aᵀ and
  // Sb = Bs Bsᵀ (Bs the B_iᵀ stacked): three products per task on the backend, every task's T
  // downloaded at once.
  const std::vector<double>* host[4] = {&s.rows.gram, &s.cols.gram, &s.rows.to_basis, &s.cols.to_basis};
  std::vector<double> stage[4];
  DeviceBuffer dev[4];
  for (int i = 0; i < 4; ++i) copy_to_backend(be, st, dev[i], *host[i], stage[i]);
  double *sa = f64(dev[0]), *sb = f64(dev[1]), *c_v = f64(dev[2]), *c_u = f64(dev[3]);
  i64 most = 0;
  for (const auto& tf : f) most = std::max(most, tf.rank);
  const std::size_t per = static_cast<std::size_t>(mu * mv);
  DeviceBuffer dx = allocate_f64(be, static_cast<std::size_t>(mu * most)),
               dy = allocate_f64(be, static_cast<std::size_t>(most * mv)), t_all = allocate_f64(be, n * per);
  for (i64 i = 0; i < n; ++i) {
    const i64 r = f[i].rank, o = first[i];
    double* t = f64(t_all) + i * per;
    if (r == 0) {
      be.fill(t, 0, per * sizeof(double), st);
      continue;
    }
    be.gemm_f64_rows(Op::transpose, Op::none, mu, r, R, 1.0, c_u, R, sb + o, R, f64(dx), r, st);
    be.gemm_f64_rows(Op::none, Op::none, r, mv, R, f[i].scale, sa + o * R, R, c_v, R, f64(dy), mv, st);
    be.gemm_f64_rows(Op::none, Op::none, mu, mv, r, 1.0, f64(dx), r, f64(dy), mv, t, mv, st);
  }
  std::vector<double> t_host;
  const double* t_all_host = host_values(be, st, t_all, n * per, t_host);
  be.synchronize(st);
  std::vector<double> prefix(static_cast<std::size_t>((mu + 1) * (mv + 1)));
  for (i64 i = 0; i < n; ++i) {
    const double* t = t_all_host + i * per;
    // prefix[j][l] = Σ_{j' < j, l' < l} T_i[j', l']²
    std::fill(prefix.begin(), prefix.end(), 0.0);
    for (i64 j = 0; j < mu; ++j) {
      double row = 0;
      for (i64 l = 0; l < mv; ++l) {
        row += t[j * mv + l] * t[j * mv + l];
        prefix[(j + 1) * (mv + 1) + l + 1] = prefix[j * (mv + 1) + l + 1] + row;
      }
    }
    const double norm_sq = s.rows.norm_sq[i];
    for (std::size_t x = 0; x < kv.size(); ++x)
      for (std::size_t y = 0; y < ku.size(); ++y)
        out[x * ku.size() + y][i] = std::max(norm_sq - prefix[ku[y] * (mv + 1) + kv[x]], 0.0);
  }
  return out;
}

SharedBasisParts shared_basis_parts(Backend& be, Stream st, const SharedBasis& s, const std::vector<TaskFactors>& f,
                                    i64 kv, i64 ku, DType storage) {
  const i64 R = s.rows.total_rank, in = s.rows.in, out = s.rows.out;
  SharedBasisParts p;
  p.kv = kv, p.ku = ku, p.total_rank = R;
  const auto count = [](i64 rows, i64 cols) { return static_cast<std::size_t>(rows * cols); };
  // Every product runs on the backend (a GPU's where the store has one); the host makes the
  // stacks, rounds what is stored, and takes the results.
  std::vector<double> stage_a, stage_b, stage_maps[2], stage_vt, stage_ut;
  DeviceBuffer a, b, maps[2], vt, ut, ca, cb;
  fill_on_backend(be, st, a, count(R, in), stage_a, [&](double* x) { stacked(x, f, in, false, false); });
  fill_on_backend(be, st, b, count(R, out), stage_b, [&](double* x) { stacked(x, f, out, true, false); });
  const std::vector<double>* to_basis[2] = {&s.rows.to_basis, &s.cols.to_basis};
  for (int side = 0; side < 2; ++side) copy_to_backend(be, st, maps[side], *to_basis[side], stage_maps[side]);
  // Vᵀ = C_v[:, :kv]ᵀ A and Uᵀ = C_u[:, :ku]ᵀ Bs, rounded as stored.
  vt = allocate_f64(be, count(kv, in));
  ut = allocate_f64(be, count(ku, out));
  be.gemm_f64_rows(Op::transpose, Op::none, kv, in, R, 1.0, f64(maps[0]), R, f64(a), in, f64(vt), in, st);
  be.gemm_f64_rows(Op::transpose, Op::none, ku, out, R, 1.0, f64(maps[1]), R, f64(b), out, f64(ut), out, st);
  std::vector<double> vt_staging, ut_staging;
  const double* vt_host = host_values(be, st, vt, count(kv, in), vt_staging);
  const double* ut_host = host_values(be, st, ut, count(ku, out), ut_staging);
  be.synchronize(st);
  p.vt.assign(vt_host, vt_host + count(kv, in));
  round_to_storage(p.vt, storage);
  p.u.resize(count(out, ku));
  transpose_tiled(p.u.data(), ku, ut_host, out, ku, out, [](double v) { return static_cast<float>(v); });
  round_to_storage(p.u, storage);
  // The cores from the bases as stored: A V (R × kv) and Uᵀ [s_iB_i] (ku × R); B's stack (the
  // stream has finished with it) now holds the scaled B_iᵀ.
  const auto stored_vt = [&](auto* x) { std::copy(p.vt.begin(), p.vt.end(), x); };
  const auto stored_ut = [&](auto* x) {  // Uᵀ, ku × out
    transpose_tiled(x, out, p.u.data(), ku, out, ku);
  };
  fill_on_backend(be, st, vt, count(kv, in), stage_vt, stored_vt);
  fill_on_backend(be, st, ut, count(ku, out), stage_ut, stored_ut);
  fill_on_backend(be, st, b, count(R, out), stage_b, [&](double* x) { stacked(x, f, out, true, true); });
  ca = allocate_f64(be, count(R, kv));
  cb = allocate_f64(be, count(ku, R));
  be.gemm_f64_rows(Op::none, Op::transpose, R, kv, in, 1.0, f64(a), in, f64(vt), in, f64(ca), kv, st);
  be.gemm_f64_rows(Op::none, Op::transpose, ku, R, out, 1.0, f64(ut), out, f64(b), out, f64(cb), R, st);
  p.core_a64.resize(count(R, kv));
  p.core_b64.resize(count(ku, R));
  be.download(p.core_a64.data(), ca.data(), p.core_a64.size() * sizeof(double), st);
  be.download(p.core_b64.data(), cb.data(), p.core_b64.size() * sizeof(double), st);
  // VᵀV and UᵀU of the bases as stored (the stored errors' Grams), from their f32 values.
  std::vector<float> stage_v32, stage_u32;
  DeviceBuffer v32, u32, vv, uu;
  fill_on_backend(be, st, v32, count(kv, in), stage_v32, stored_vt);
  fill_on_backend(be, st, u32, count(ku, out), stage_u32, stored_ut);
  vv = allocate_f64(be, count(kv, kv));
  uu = allocate_f64(be, count(ku, ku));
  be.gram_f64(v32.f32(), kv, in, f64(vv), st);
  be.gram_f64(u32.f32(), ku, out, f64(uu), st);
  p.vv.resize(count(kv, kv));
  p.uu.resize(count(ku, ku));
  be.download(p.vv.data(), vv.data(), p.vv.size() * sizeof(double), st);
  be.download(p.uu.data(), uu.data(), p.uu.size() * sizeof(double), st);
  be.synchronize(st);
  p.core_a.assign(p.core_a64.begin(), p.core_a64.end());
  p.core_b.assign(p.core_b64.begin(), p.core_b64.end());
  round_to_storage(p.core_a, storage);
  round_to_storage(p.core_b, storage);
  return p;
}

std::vector<double> shared_basis_stored_errors(Backend& be, Stream st, const SharedBasisParts& p,
                                               const std::vector<TaskFactors>& f, const std::vector<double>& norm_sq) {
  const i64 kv = p.kv, ku = p.ku, R = p.total_rank;
  const auto first = first_rows(f);
  std::vector<std::size_t> block(f.size() + 1, 0);  // task i's r × r results from block[i]
  for (std::size_t i = 0; i < f.size(); ++i) block[i + 1] = block[i] + static_cast<std::size_t>(f[i].rank * f[i].rank);
  // The cores as stored (C_a R × kv, C_b ku × R) and before rounding, the bases' Grams; a task's
  // cores are rows o … o + r of C_a and columns o … o + r of C_b, read in place.
  std::vector<double> stage[6];
  DeviceBuffer dev[6];
  fill_on_backend(be, st, dev[0], p.core_a.size(), stage[0],
                  [&](double* x) { std::copy(p.core_a.begin(), p.core_a.end(), x); });
  fill_on_backend(be, st, dev[1], p.core_b.size(), stage[1],
                  [&](double* x) { std::copy(p.core_b.begin(), p.core_b.end(), x); });
  copy_to_backend(be, st, dev[2], p.core_a64, stage[2]);
  copy_to_backend(be, st, dev[3], p.core_b64, stage[3]);
  copy_to_backend(be, st, dev[4], p.vv, stage[4]);
  copy_to_backend(be, st, dev[5], p.uu, stage[5]);
  double *ca = f64(dev[0]), *cb = f64(dev[1]), *xa = f64(dev[2]), *xb = f64(dev[3]), *vv = f64(dev[4]),
         *uu = f64(dev[5]);
  i64 most = 0;
  for (const auto& tf : f) most = std::max(most, tf.rank);
  DeviceBuffer t1 = allocate_f64(be, static_cast<std::size_t>(std::max(ku, kv) * most)), out[4];
  for (auto& o : out) o = allocate_f64(be, block.back());
  double *gb = f64(out[0]), *ga = f64(out[1]), *xbb = f64(out[2]), *xaa = f64(out[3]);
  for (std::size_t i = 0; i < f.size(); ++i) {
    const i64 r = f[i].rank, o = first[i];
    if (r == 0) continue;
    const std::size_t at = block[i];
    // C_bᵀ (UᵀU) C_b and C_a (VᵀV) C_aᵀ.
    be.gemm_f64_rows(Op::none, Op::none, ku, r, ku, 1.0, uu, ku, cb + o, R, f64(t1), r, st);
    be.gemm_f64_rows(Op::transpose, Op::none, r, r, ku, 1.0, cb + o, R, f64(t1), r, gb + at, r, st);
    be.gemm_f64_rows(Op::none, Op::none, r, kv, kv, 1.0, ca + o * kv, kv, vv, kv, f64(t1), kv, st);
    be.gemm_f64_rows(Op::none, Op::transpose, r, r, kv, 1.0, f64(t1), kv, ca + o * kv, kv, ga + at, r, st);
    // C_bᵀ (Uᵀs_iB_i) and C_a (A_iV)ᵀ.
    be.gemm_f64_rows(Op::transpose, Op::none, r, r, ku, 1.0, cb + o, R, xb + o, R, xbb + at, r, st);
    be.gemm_f64_rows(Op::none, Op::transpose, r, r, kv, 1.0, ca + o * kv, kv, xa + o * kv, kv, xaa + at, r, st);
  }
  std::vector<double> host[4];
  for (int k = 0; k < 4; ++k) {
    host[k].resize(block.back());
    be.download(host[k].data(), out[k].data(), host[k].size() * sizeof(double), st);
  }
  be.synchronize(st);
  std::vector<double> err(f.size());
  for (std::size_t i = 0; i < f.size(); ++i) {
    double whole = 0, cross = 0;
    for (std::size_t e = block[i]; e < block[i + 1]; ++e)
      whole += host[0][e] * host[1][e], cross += host[2][e] * host[3][e];
    err[i] = std::max(whole - 2 * cross + norm_sq[i], 0.0);
  }
  return err;
}

void shared_basis_task(const float* vt, const float* u, const float* core_a, const float* core_b, i64 in,
                       i64 out, i64 kv, i64 ku, i64 total_rank, i64 first, i64 r, std::vector<float>& a,
                       std::vector<float>& b) {
  a.assign(static_cast<std::size_t>(r * in), 0.0f);
  b.assign(static_cast<std::size_t>(out * r), 0.0f);
  if (r == 0) return;
  const std::vector<double> v(vt, vt + kv * in), uu(u, u + out * ku);
  std::vector<double> ca(static_cast<std::size_t>(r * kv)), cb(static_cast<std::size_t>(ku * r));
  for (i64 k = 0; k < r; ++k)
    for (i64 c = 0; c < kv; ++c) ca[k * kv + c] = core_a[(first + k) * kv + c];
  for (i64 j = 0; j < ku; ++j)
    for (i64 k = 0; k < r; ++k) cb[j * r + k] = core_b[j * total_rank + first + k];
  std::vector<double> a64(a.size()), b64(b.size());
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, in, kv, 1.0, ca.data(), kv, v.data(), in, 0.0,
              a64.data(), in);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, r, ku, 1.0, uu.data(), ku, cb.data(), r, 0.0,
              b64.data(), r);
  std::copy(a64.begin(), a64.end(), a.begin());
  std::copy(b64.begin(), b64.end(), b.begin());
}

}  // namespace revmerge
