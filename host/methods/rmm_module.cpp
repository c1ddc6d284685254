#include "methods/rmm_module.hpp"

#include <algorithm>
#include <cmath>

#include "backend/caching_pool.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

std::size_t floats(i64 count) { return static_cast<std::size_t>(count) * sizeof(float); }

// Device-side work buffers of one side (A or B), m positions.
struct SideBuffers {
  DeviceBuffer x;      // m × r × n: the stacked vectors, centred in place
  DeviceBuffer mean;   // m × r
  DeviceBuffer gram;   // m × n × n, eigenvectors after the solve
  DeviceBuffer eig;    // m × n
  DeviceBuffer wp;     // m × n × p
  DeviceBuffer basis;  // m × r × p
  DeviceBuffer coef;   // m × p × n
  DeviceBuffer recon;  // m × r × n: X̂
  DeviceBuffer sums;   // n doubles: spectrum
  DeviceBuffer mark;   // m: 1 where the position holds non-finite values

  SideBuffers(Backend& be, i64 m, const RmmShape& s)
      : x(be.allocate(floats(m * s.r * s.n))),
        mean(be.allocate(floats(m * s.r))),
        gram(be.allocate(floats(m * s.n * s.n))),
        eig(be.allocate(floats(m * s.n))),
        wp(be.allocate(floats(m * s.n * s.p))),
        basis(be.allocate(floats(m * s.r * s.p))),
        coef(be.allocate(floats(m * s.p * s.n))),
        recon(be.allocate(floats(m * s.r * s.n))),
        sums(be.allocate(static_cast<std::size_t>(s.n) * sizeof(double))),
        mark(be.allocate(floats(m))) {}
};

// Per position: centre, Gram, eigendecomposition, top-p basis and coefficients, rounding to the
// storage dtype, reconstruction X̂ = V C + μ.
void rmm_side(Backend& be, SideBuffers& sb, i64 m, const RmmShape& s, DType storage, Stream st) {
  const i64 r = s.r, n = s.n, p = s.p;
  be.center_rows(sb.x.f32(), sb.mean.f32(), m * r, n, st);
  const auto x = MatBatch::packed(sb.x.f32(), m, r, n);
  be.gemm(Op::transpose, Op::none, 1.0f, x, x, 0.0f, MatBatch::packed(sb.gram.f32(), m, n, n), st);
  be.mask_nonfinite(sb.gram.f32(), sb.mark.f32(), m, n, st);
  be.symmetric_eigen(MatBatch::packed(sb.gram.f32(), m, n, n), sb.eig.f32(), st);
  be.column_sums(sb.eig.f32(), static_cast<double*>(sb.sums.data()), m, n, st);
  be.select_top(sb.gram.f32(), sb.wp.f32(), m, n, p, st);
  const auto basis = MatBatch::packed(sb.basis.f32(), m, r, p);
  be.gemm(Op::none, Op::none, 1.0f, x, MatBatch::packed(sb.wp.f32(), m, n, p), 0.0f, basis, st);
  be.normalize_basis(sb.basis.f32(), sb.wp.f32(), sb.coef.f32(), sb.eig.f32(), m, r, n, p,
                     rmm_drop_tolerance(n), st);
  be.poison_marked(sb.mark.f32(), sb.mean.f32(), sb.basis.f32(), sb.coef.f32(), m, r, p, n, st);
  be.round_to(sb.mean.f32(), m * r, storage, st);
  be.round_to(sb.basis.f32(), m * r * p, storage, st);
  be.round_to(sb.coef.f32(), m * p * n, storage, st);
  be.broadcast_rows(sb.mean.f32(), sb.recon.f32(), m * r, n, st);
  be.gemm(Op::none, Op::none, 1.0f, basis, MatBatch::packed(sb.coef.f32(), m, p, n), 1.0f,
          MatBatch::packed(sb.recon.f32(), m, r, n), st);
}

std::vector<float> fetch(Backend& be, const DeviceBuffer& b, i64 count, Stream st) {
  std::vector<float> out(static_cast<std::size_t>(count));
  be.download(out.data(), b.data(), floats(count), st);
  return out;
}

std::vector<double> fetch_doubles(Backend& be, const DeviceBuffer& b, i64 count, Stream st) {
  std::vector<double> out(static_cast<std::size_t>(count));
  be.download(out.data(), b.data(), static_cast<std::size_t>(count) * sizeof(double), st);
  return out;
}

void check_shape(const RmmShape& s) {
  if (s.n < 2 || s.p < 1 || s.p >= s.n || s.r < 1 || s.in < 1 || s.out < 1)
    throw usage_error("rmm: invalid sizes n=" + std::to_string(s.n) + " p=" + std::to_string(s.p) +
                      " r=" + std::to_string(s.r) + " (needs n ≥ 2 and 1 ≤ p ≤ n − 1)");
}

double safe_ratio(double num, double den) {
  if (std::isnan(num) || std::isnan(den)) return NAN;  // non-finite inputs were allowed
  if (den > 0) return std::sqrt(std::max(num, 0.0) / den);
  return num > 0 ? INFINITY : 0.0;  // both zero: the task's weights are exactly kept
}

}  // namespace

float rmm_drop_tolerance(std::int64_t n) {
  // A direction whose energy is within (n·ε_f32)² of the largest is rounding noise of the f32
  // Gram; keeping it would only divide noise by noise.
  const double eps = std::ldexp(1.0, -23);
  return static_cast<float>(static_cast<double>(n * n) * eps * eps);
}

RmmModuleResult rmm_module(Backend& be, const RmmShape& s, const float* host_a,
                           const float* host_b, DType storage, Stream st) {
  check_shape(s);
  // Originals, task-major as read: A n × r × in, B n × out × r.
  DeviceBuffer a = be.allocate(floats(s.n * s.r * s.in)), b = be.allocate(floats(s.n * s.out * s.r));
  be.upload(a.data(), host_a, floats(s.n * s.r * s.in), st);
  be.upload(b.data(), host_b, floats(s.n * s.out * s.r), st);
  return rmm_module_device(be, s, a.f32(), b.f32(), storage, st);
}

std::uint64_t rmm_module_work_bytes(const RmmShape& s, Backend& be) {
  const i64 n = s.n, r = s.r, p = s.p;
  std::uint64_t total = 0;
  auto add = [&](i64 count, std::size_t elem = sizeof(float)) {
    total += pool_size_class(static_cast<std::size_t>(count) * elem);
  };
  for (const i64 m : {s.in, s.out}) {  // SideBuffers
    for (const i64 c : {m * r * n, m * r, m * n * n, m * n, m * n * p, m * r * p, m * p * n, m * r * n, m})
      add(c);
    add(n, sizeof(double));
  }
  add(n * r * s.in);  // D_A
  add(n * s.out * r);  // D_B
  add(6 * n * r * r);
  add(11 * n, sizeof(double));
  add(n * r * r);
  // Each side's solver memory is held until the module's closing synchronize.
  return total + be.symmetric_eigen_work_bytes(s.in, n) + be.symmetric_eigen_work_bytes(s.out, n);
}

RmmModuleResult rmm_module_device(Backend& be, const RmmShape& s, const float* a_in,
                                  const float* b_in, DType storage, Stream st) {
  check_shape(s);
  const i64 n = s.n, r = s.r, in = s.in, out = s.out;
  // The inputs are only read (permuted, subtracted from, multiplied); MatBatch is non-const.
  float* a = const_cast<float*>(a_in);
  float* b = const_cast<float*>(b_in);

  // Position-major stacks: A's column j and B's row j become r × n matrices.
  SideBuffers sa(be, in, s), sb(be, out, s);
  be.permute3(a, 1, in, r * in, sa.x.f32(), in, r, n, st);
  be.permute3(b, r, 1, out * r, sb.x.f32(), out, r, n, st);
  rmm_side(be, sa, in, s, storage, st);
  rmm_side(be, sb, out, s, storage, st);

  // Back to task-major (Â n × r × in, B̂ n × out × r) and, in place, the differences D = X̂ − X.
  DeviceBuffer da = be.allocate(floats(n * r * in)), db = be.allocate(floats(n * out * r));
  be.permute3(sa.recon.f32(), 1, n, r * n, da.f32(), n, r, in, st);
  be.permute3(sb.recon.f32(), 1, r * n, n, db.f32(), n, out, r, st);
  be.subtract(da.f32(), a, da.f32(), n * r * in, st);
  be.subtract(db.f32(), b, db.f32(), n * out * r, st);

  // ‖B̂Â − BA‖² = ‖B̂ D_A + D_B A‖² through r × r Grams: no out × in matrix is formed, and every
  // term is already of the size of the error (no cancellation of large numbers). With
  // B̂ = B + D_B, the terms in B̂ expand into Grams of B and D_B (D_A D_Aᵀ is symmetric):
  //   ⟨B̂ᵀB̂, D_A D_Aᵀ⟩ = ⟨BᵀB + D_BᵀD_B, D_A D_Aᵀ⟩ + 2⟨BᵀD_B, D_A D_Aᵀ⟩,
  //   ⟨B̂ᵀD_B, D_A Aᵀ⟩ = ⟨BᵀD_B + D_BᵀD_B, D_A Aᵀ⟩ — six products with K = in or out, not seven.
  const auto A = MatBatch::packed(a, n, r, in), DA = MatBatch::packed(da.f32(), n, r, in);
  const auto B = MatBatch::packed(b, n, out, r), DB = MatBatch::packed(db.f32(), n, out, r);
  DeviceBuffer grams = be.allocate(floats(6 * n * r * r));
  auto gram = [&](int k) { return MatBatch::packed(grams.f32() + k * n * r * r, n, r, r); };
  be.gemm(Op::none, Op::transpose, 1.0f, A, A, 0.0f, gram(0), st);     // A Aᵀ
  be.gemm(Op::none, Op::transpose, 1.0f, DA, DA, 0.0f, gram(1), st);   // D_A D_Aᵀ
  be.gemm(Op::none, Op::transpose, 1.0f, DA, A, 0.0f, gram(2), st);    // D_A Aᵀ
  be.gemm(Op::transpose, Op::none, 1.0f, B, B, 0.0f, gram(3), st);     // Bᵀ B
  be.gemm(Op::transpose, Op::none, 1.0f, DB, DB, 0.0f, gram(4), st);   // D_Bᵀ D_B
  be.gemm(Op::transpose, Op::none, 1.0f, B, DB, 0.0f, gram(5), st);    // Bᵀ D_B

  // Per-task inner products of r × r blocks for the delta error, and the traces of the Grams
  // (⟨G, I⟩ = ‖·‖²) for the factor errors, so no sum runs over a whole factor.
  constexpr int kDots = 11;
  DeviceBuffer dots = be.allocate(static_cast<std::size_t>(kDots * n) * sizeof(double));
  auto dot = [&](int k) { return static_cast<double*>(dots.data()) + k * n; };
  const i64 rr = r * r;
  std::vector<float> eye(static_cast<std::size_t>(n * rr), 0.0f);
  for (i64 i = 0; i < n; ++i)
    for (i64 k = 0; k < r; ++k) eye[i * rr + k * r + k] = 1.0f;
  DeviceBuffer identity = be.allocate(floats(n * rr));
  be.upload(identity.data(), eye.data(), floats(n * rr), st);
  be.batched_dot(gram(3).data, gram(1).data, dot(0), n, rr, st);   // ⟨BᵀB, D_A D_Aᵀ⟩
  be.batched_dot(gram(4).data, gram(1).data, dot(1), n, rr, st);   // ⟨D_BᵀD_B, D_A D_Aᵀ⟩
  be.batched_dot(gram(5).data, gram(1).data, dot(2), n, rr, st);   // ⟨BᵀD_B, D_A D_Aᵀ⟩
  be.batched_dot(gram(4).data, gram(0).data, dot(3), n, rr, st);   // ⟨D_BᵀD_B, A Aᵀ⟩
  be.batched_dot(gram(5).data, gram(2).data, dot(4), n, rr, st);   // ⟨BᵀD_B, D_A Aᵀ⟩
  be.batched_dot(gram(4).data, gram(2).data, dot(5), n, rr, st);   // ⟨D_BᵀD_B, D_A Aᵀ⟩
  be.batched_dot(gram(3).data, gram(0).data, dot(6), n, rr, st);   // ⟨BᵀB, A Aᵀ⟩ = ‖BA‖²
  be.batched_dot(gram(1).data, identity.f32(), dot(7), n, rr, st);   // ‖D_A‖²
  be.batched_dot(gram(0).data, identity.f32(), dot(8), n, rr, st);   // ‖A‖²
  be.batched_dot(gram(4).data, identity.f32(), dot(9), n, rr, st);   // ‖D_B‖²
  be.batched_dot(gram(3).data, identity.f32(), dot(10), n, rr, st);  // ‖B‖²

  RmmModuleResult res;
  res.a.mean = fetch(be, sa.mean, in * r, st);
  res.a.basis = fetch(be, sa.basis, in * r * s.p, st);
  res.a.coef = fetch(be, sa.coef, in * s.p * n, st);
  res.b.mean = fetch(be, sb.mean, out * r, st);
  res.b.basis = fetch(be, sb.basis, out * r * s.p, st);
  res.b.coef = fetch(be, sb.coef, out * s.p * n, st);
  const auto d = fetch_doubles(be, dots, kDots * n, st);
  res.a.spectrum = fetch_doubles(be, sa.sums, n, st);
  res.b.spectrum = fetch_doubles(be, sb.sums, n, st);
  be.synchronize(st);

  for (auto* side : {&res.a, &res.b}) {
    std::reverse(side->spectrum.begin(), side->spectrum.end());  // descending
    for (auto& v : side->spectrum) v = std::max(v, 0.0);          // solver noise below zero
  }
  for (i64 i = 0; i < n; ++i) {
    auto at = [&](int k) { return d[k * n + i]; };
    const double hb_da = at(0) + at(1) + 2 * at(2);  // ⟨B̂ᵀB̂, D_A D_Aᵀ⟩
    const double hdb_daa = at(4) + at(5);            // ⟨B̂ᵀD_B, D_A Aᵀ⟩
    const double num = hb_da + at(3) + 2 * hdb_daa;
    res.delta_error.push_back(safe_ratio(num, at(6)));
    res.delta_norm.push_back(std::sqrt(std::max(at(6), 0.0)));
    res.a.factor_error.push_back(safe_ratio(at(7), at(8)));
    res.a.factor_sq_error.push_back(at(7));
    res.b.factor_error.push_back(safe_ratio(at(9), at(10)));
    res.b.factor_sq_error.push_back(at(9));
  }
  return res;
}

}  // namespace revmerge
