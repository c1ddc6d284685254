#include "methods/rmm_module.hpp"

#include <algorithm>
#include <cmath>

#include "backend/caching_pool.hpp"
#include "backend/cpu_backend.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

std::size_t floats(i64 count) { return static_cast<std::size_t>(count) * sizeof(float); }

// A side's stacks as read, task-major: element (task t, row k, position j) at
// src[t·task + k·row + j·pos]. A: n × r × in (pos 1, row in); B: n × out × r (pos r, row 1).
struct SideInput {
  const float* src;
  i64 task, row, pos;
};

// A side's results over all its m positions, position-major.
struct SideOut {
  float* mean;   // m × r
  float* basis;  // m × r × p
  float* coef;   // m × p × n
  float* eig;    // m × n, ascending per position
};

// Work of a run of positions: the stacked vectors (centred in place), their Grams
// (eigenvectors after the solve), the top-p eigenvectors, the reconstruction X̂ = V C + μ, and a
// mark for positions holding non-finite values.
struct SideWork {
  float* x;      // count × r × n
  float* gram;   // count × n × n
  float* wp;     // count × n × p
  float* recon;  // count × r × n
  float* mark;   // count
  static std::size_t floats_for(i64 count, const RmmShape& s) {
    return static_cast<std::size_t>(count * (2 * s.r * s.n + s.n * s.n + s.n * s.p + 1));
  }
  static SideWork carve(float* base, i64 count, const RmmShape& s) {
    SideWork w;
    w.x = base;
    w.gram = w.x + count * s.r * s.n;
    w.wp = w.gram + count * s.n * s.n;
    w.recon = w.wp + count * s.n * s.p;
    w.mark = w.recon + count * s.r * s.n;
    return w;
  }
};

// Positions [j0, j0 + count) of one side: gather, centre, Gram, eigendecomposition, top-p
// basis and coefficients, rounding to the storage dtype, reconstruction. Every step is per
// position, so any split of the positions gives the same bits.
void rmm_positions(Backend& be, const SideInput& in, i64 j0, i64 count, const SideWork& w,
                   const SideOut& out, const RmmShape& s, DType storage, Stream st) {
  const i64 r = s.r, n = s.n, p = s.p;
  float* mean = out.mean + j0 * r;
  float* basis_f = out.basis + j0 * r * p;
  float* coef = out.coef + j0 * p * n;
  float* eig = out.eig + j0 * n;
  be.permute3(in.src + j0 * in.pos, in.pos, in.row, in.task, w.x, count, r, n, st);
  be.center_rows(w.x, mean, count * r, n, st);
  const auto x = MatBatch::packed(w.x, count, r, n);
  be.gemm(Op::transpose, Op::none, 1.0f, x, x, 0.0f, MatBatch::packed(w.gram, count, n, n), st);
  be.mask_nonfinite(w.gram, w.mark, count, n, st);
  be.symmetric_eigen(MatBatch::packed(w.gram, count, n, n), eig, st);
  be.select_top(w.gram, w.wp, count, n, p, st);
  const auto basis = MatBatch::packed(basis_f, count, r, p);
  be.gemm(Op::none, Op::none, 1.0f, x, MatBatch::packed(w.wp, count, n, p), 0.0f, basis, st);
  be.normalize_basis(basis_f, w.wp, coef, eig, count, r, n, p, rmm_drop_tolerance(n), st);
  be.poison_marked(w.mark, mean, basis_f, coef, count, r, p, n, st);
  be.round_to(mean, count * r, storage, st);
  be.round_to(basis_f, count * r * p, storage, st);
  be.round_to(coef, count * p * n, storage, st);
  be.broadcast_rows(mean, w.recon, count * r, n, st);
  be.gemm(Op::none, Op::none, 1.0f, basis, MatBatch::packed(coef, count, p, n), 1.0f,
          MatBatch::packed(w.recon, count, r, n), st);
}

// D = X̂ − X for positions [j0, j0 + count), written task-major beside the inputs (the same
// subtraction the whole-batch path does after permuting X̂ back).
void scatter_difference(const SideInput& in, i64 j0, i64 count, const float* recon,
                        const RmmShape& s, float* d) {
  const i64 r = s.r, n = s.n;
  for (i64 t = 0; t < n; ++t)
    for (i64 a = 0; a < (in.pos == 1 ? r : count); ++a)
      for (i64 b = 0; b < (in.pos == 1 ? count : r); ++b) {
        const i64 k = in.pos == 1 ? a : b, j = in.pos == 1 ? b : a;  // inner loop: unit stride
        const i64 at = t * in.task + k * in.row + (j0 + j) * in.pos;
        d[at] = recon[j * r * n + k * n + t] - in.src[at];
      }
}

// Positions per block on the CPU: a block's stacks, Grams and reconstruction (~260 KB for
// r = 64, n = 8) stay in one core's cache through every step.
constexpr i64 kCpuBlock = 64;

// One side, every position, and D = X̂ − X into `d`. On the CPU the positions go in blocks, one
// thread each, every step of a block before the next block; elsewhere the whole side is one
// batch per step (a GPU wants big launches). Both give the same bits.
// `work` (whole batch only) holds SideWork::floats_for(m) floats; the caller keeps it until the
// stream is synchronized, so no other stream is handed it while this one still works in it.
void rmm_side(Backend& be, const SideInput& in, i64 m, const SideOut& out, double* sums,
              float* d, const RmmShape& s, DType storage, RmmSchedule schedule, float* work,
              Stream st) {
  if (schedule == RmmSchedule::position_blocks) {
    auto* cpu = dynamic_cast<CpuBackend*>(&be);
    if (!cpu) throw usage_error("rmm: position blocks run on the CPU backend only");
    const i64 blocks = (m + kCpuBlock - 1) / kCpuBlock;
    cpu->parallel_blocks(blocks, [&](i64 blk) {
      thread_local std::vector<float> scratch;
      scratch.resize(SideWork::floats_for(kCpuBlock, s));
      const i64 j0 = blk * kCpuBlock, count = std::min(kCpuBlock, m - j0);
      const auto w = SideWork::carve(scratch.data(), count, s);
      rmm_positions(be, in, j0, count, w, out, s, storage, st);
      scatter_difference(in, j0, count, w.recon, s, d);
    });
  } else {
    const auto w = SideWork::carve(work, m, s);
    rmm_positions(be, in, 0, m, w, out, s, storage, st);
    // Back to task-major, then D = X̂ − X in place.
    if (in.pos == 1) be.permute3(w.recon, 1, s.n, s.r * s.n, d, s.n, s.r, m, st);
    else be.permute3(w.recon, 1, s.r * s.n, s.n, d, s.n, m, s.r, st);
    be.subtract(d, in.src, d, s.n * s.r * m, st);
  }
  be.column_sums(out.eig, sums, m, s.n, st);
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
                           const float* host_b, DType storage, Stream st, RmmSchedule schedule) {
  check_shape(s);
  // Originals, task-major as read: A n × r × in, B n × out × r.
  DeviceBuffer a = be.allocate(floats(s.n * s.r * s.in)), b = be.allocate(floats(s.n * s.out * s.r));
  be.upload(a.data(), host_a, floats(s.n * s.r * s.in), st);
  be.upload(b.data(), host_b, floats(s.n * s.out * s.r), st);
  return rmm_module_device(be, s, a.f32(), b.f32(), storage, st, schedule);
}

RmmSchedule resolve(RmmSchedule schedule, const Backend& be) {
  if (schedule != RmmSchedule::automatic) return schedule;
  return dynamic_cast<const CpuBackend*>(&be) ? RmmSchedule::position_blocks
                                              : RmmSchedule::whole_batch;
}

std::uint64_t rmm_module_work_bytes(const RmmShape& s, Backend& be) {
  const i64 n = s.n, r = s.r, p = s.p;
  std::uint64_t total = 0;
  auto add = [&](i64 count, std::size_t elem = sizeof(float)) {
    total += pool_size_class(static_cast<std::size_t>(count) * elem);
  };
  // As rmm_module_device allocates: the whole-batch schedule takes a SideWork for every
  // position of a side from the pool; position blocks, one block's SideWork per thread (kept
  // by the thread, outside the pool).
  const auto* cpu = dynamic_cast<const CpuBackend*>(&be);
  const bool blocks = resolve(RmmSchedule::automatic, be) == RmmSchedule::position_blocks && cpu;
  for (const i64 m : {s.in, s.out}) {
    add(m * r);                                              // mean
    add(m * r * p);                                          // basis
    add(m * p * n);                                          // coef
    add(m * n);                                              // eigenvalues
    add(n, sizeof(double));                                  // spectrum
    if (!blocks) add(static_cast<i64>(SideWork::floats_for(m, s)));  // SideWork
  }
  if (blocks)
    total += static_cast<std::uint64_t>(cpu->threads()) *
             floats(static_cast<i64>(SideWork::floats_for(kCpuBlock, s)));
  add(n * r * s.in);  // D_A
  add(n * s.out * r);  // D_B
  add(6 * n * r * r);
  add(11 * n, sizeof(double));
  add(n * r * r);
  // Each side's solver memory is held until the module's closing synchronize.
  return total + be.symmetric_eigen_work_bytes(s.in, n) + be.symmetric_eigen_work_bytes(s.out, n);
}

// A side's results in backend memory.
struct SideResults {
  DeviceBuffer mean, basis, coef, eig, sums;
  SideResults(Backend& be, i64 m, const RmmShape& s)
      : mean(be.allocate(floats(m * s.r))),
        basis(be.allocate(floats(m * s.r * s.p))),
        coef(be.allocate(floats(m * s.p * s.n))),
        eig(be.allocate(floats(m * s.n))),
        sums(be.allocate(static_cast<std::size_t>(s.n) * sizeof(double))) {}
  SideOut out() { return {mean.f32(), basis.f32(), coef.f32(), eig.f32()}; }
  double* spectrum() { return static_cast<double*>(sums.data()); }
};

RmmModuleResult rmm_module_device(Backend& be, const RmmShape& s, const float* a_in,
                                  const float* b_in, DType storage, Stream st,
                                  RmmSchedule schedule) {
  check_shape(s);
  schedule = resolve(schedule, be);
  const i64 n = s.n, r = s.r, in = s.in, out = s.out;
  // The inputs are only read (gathered, subtracted from, multiplied); MatBatch is non-const.
  float* a = const_cast<float*>(a_in);
  float* b = const_cast<float*>(b_in);

  // Each side's results and, task-major beside the inputs (Â n × r × in, B̂ n × out × r), the
  // differences D = X̂ − X.
  SideResults sa(be, in, s), sb(be, out, s);
  DeviceBuffer da = be.allocate(floats(n * r * in)), db = be.allocate(floats(n * out * r));
  DeviceBuffer work_a, work_b;
  if (schedule == RmmSchedule::whole_batch) {
    work_a = be.allocate(floats(static_cast<i64>(SideWork::floats_for(in, s))));
    work_b = be.allocate(floats(static_cast<i64>(SideWork::floats_for(out, s))));
  }
  rmm_side(be, {a, r * in, in, 1}, in, sa.out(), sa.spectrum(), da.f32(), s, storage, schedule,
           work_a.f32(), st);
  rmm_side(be, {b, out * r, 1, r}, out, sb.out(), sb.spectrum(), db.f32(), s, storage, schedule,
           work_b.f32(), st);

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
