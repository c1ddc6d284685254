// RMM of one module: the per-position routine over both sides, the error Grams, the error
// terms, all queued on one stream into one packed result buffer (rmm_module.hpp).
#include "methods/rmm_module.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "backend/caching_pool.hpp"
#include "backend/gemm_shapes.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

std::size_t round_up(std::size_t x, std::size_t to) { return (x + to - 1) / to * to; }

i64 positions(const RmmShape& s, int side) { return side == 0 ? s.in : s.out; }

// Split-K pieces of a side's error Grams.
i64 gram_chunks(const Backend& be, const RmmShape& s, int side) {
  return detail::whole_split_k(be, s.n, 2 * s.r, 2 * s.r, positions(s, side));
}

// The module's work buffers, in the order rmm_module_enqueue carves them.
struct WorkSizes {
  std::size_t ext[2], eig[2], gram[2], sums;
  WorkSizes(const Backend& be, const RmmShape& s) {
    const auto r = static_cast<std::size_t>(s.r), n = static_cast<std::size_t>(s.n);
    for (int side = 0; side < 2; ++side) {
      const auto m = static_cast<std::size_t>(positions(s, side));
      ext[side] = sizeof(float) * n * 2 * r * m;
      eig[side] = sizeof(double) * m * n;
      gram[side] = sizeof(float) * n * static_cast<std::size_t>(gram_chunks(be, s, side)) * 4 * r * r;
    }
    sums = sizeof(double) * static_cast<std::size_t>(kernels::rmm_error_scratch_doubles(s.n, s.r, s.in, s.out));
  }
};

double safe_ratio(double num, double den) {
  if (std::isnan(num) || std::isnan(den)) return NAN;  // non-finite inputs were allowed
  if (den > 0) return std::sqrt(std::max(num, 0.0) / den);
  return num > 0 ? INFINITY : 0.0;  // both zero: the task's weights are exactly kept
}

}  // namespace

kernels::ElemType rmm_storage_type(DType t) {
  switch (t) {
    case DType::F32: return kernels::ElemType::f32;
    case DType::F16: return kernels::ElemType::f16;
    case DType::BF16: return kernels::ElemType::bf16;
    default:
      throw unsupported_error("rmm: results are stored as F32, F16 or BF16, not " +
                              std::string(dtype_name(t)));
  }
}

void check_rmm_shape(const RmmShape& s) {
  if (s.n < 2 || s.n > kernels::kRmmMaxTasks || s.p < 1 || s.p >= s.n || s.r < 1 ||
      s.r > kernels::kRmmMaxRank || s.in < 1 || s.out < 1)
    throw usage_error("rmm: invalid sizes n=" + std::to_string(s.n) + " p=" + std::to_string(s.p) +
                      " r=" + std::to_string(s.r) + " (needs 2 ≤ n ≤ " +
                      std::to_string(kernels::kRmmMaxTasks) + ", 1 ≤ p ≤ n − 1, r ≤ " +
                      std::to_string(kernels::kRmmMaxRank) + ")");
}

float rmm_drop_tolerance(std::int64_t n) {
  const double eps = std::ldexp(1.0, -23);
  return static_cast<float>(static_cast<double>(n * n) * eps * eps);
}

RmmPacked RmmPacked::layout(const RmmShape& s, DType storage) {
  RmmPacked l;
  std::size_t at = 0;
  for (int side = 0; side < 2; ++side)
    for (int part = 0; part < 3; ++part) {
      at = round_up(at, 16);
      (part == 0 ? l.mean : part == 1 ? l.basis : l.coef)[side] = at;
      at += l.tensor_bytes(s, storage, side, part);
    }
  l.terms = round_up(at, 16);
  l.status = l.terms + sizeof(double) * static_cast<std::size_t>(s.n * (kernels::kRmmErrorTerms + 2));
  l.bytes = l.status + 2 * sizeof(unsigned long long);
  return l;
}

std::size_t RmmPacked::tensor_bytes(const RmmShape& s, DType storage, int side, int part) const {
  const auto m = static_cast<std::size_t>(positions(s, side)), r = static_cast<std::size_t>(s.r),
             p = static_cast<std::size_t>(s.p), n = static_cast<std::size_t>(s.n);
  return dtype_size(storage) * m * (part == 0 ? r : part == 1 ? r * p : p * n);
}

RmmModuleWork rmm_module_enqueue(Backend& be, const RmmShape& s,
                                 const std::vector<kernels::RmmTaskFactors>& tasks, DType storage,
                                 void* packed, Stream st, RmmTerms terms) {
  check_rmm_shape(s);
  if (static_cast<i64>(tasks.size()) != s.n)
    throw usage_error("rmm: " + std::to_string(tasks.size()) + " task inputs for n = " +
                      std::to_string(s.n));
  const i64 n = s.n, r = s.r;
  const auto layout = RmmPacked::layout(s, storage);
  auto* out = static_cast<unsigned char*>(packed);
  const WorkSizes sizes(be, s);
  RmmModuleWork work;
  auto take = [&](std::size_t bytes) {
    work.buffers.push_back(be.allocate(bytes));
    return work.buffers.back().data();
  };

  kernels::RmmModuleArgs args;
  std::copy(tasks.begin(), tasks.end(), args.tasks);
  args.n = n, args.r = r, args.in = s.in, args.out = s.out, args.p = s.p;
  args.storage = rmm_storage_type(storage);
  args.drop_tol = rmm_drop_tolerance(n);
  i64 chunks[2];
  for (int side = 0; side < 2; ++side) {
    args.mean[side] = out + layout.mean[side];
    args.basis[side] = out + layout.basis[side];
    args.coef[side] = out + layout.coef[side];
    args.ext[side] = work.ext[side] = static_cast<float*>(take(sizes.ext[side]));
    args.eigenvalues[side] = static_cast<double*>(take(sizes.eig[side]));
    chunks[side] = gram_chunks(be, s, side);
  }
  args.status = reinterpret_cast<unsigned long long*>(out + layout.status);
  be.fill(args.status, 0xff, 2 * sizeof(unsigned long long), st);  // kRmmNoKey
  be.rmm_positions(args, st);
  if (terms == RmmTerms::none) {
    be.fill(out + layout.terms, 0, layout.status - layout.terms, st);
    return work;
  }

  // The error Grams per task and chunk, one GEMM per side: G_A = E_A E_Aᵀ with E_A = [A; D_A]
  // and G_B = E_BᵀE_B with E_B = [B, D_B], both stored position-major (C × 2r pieces, a
  // position's x then D). (Three GEMMs on the blocks the terms use would do a quarter fewer
  // flops; on the CPU they ran no faster, on a GPU they are three launches instead of one. The
  // CPU backend makes a Gram's upper triangle alone, ssyrk, and mirrors it: 10 % of the 7b set's
  // compute.)
  kernels::RmmErrorArgs e;
  e.n = n, e.r = r;
  for (int side = 0; side < 2; ++side) {
    e.eigenvalues[side] = args.eigenvalues[side];
    e.m[side] = positions(s, side);
    if (terms == RmmTerms::spectrum) continue;  // no Grams: their sums and the terms are zero
    const i64 C = positions(s, side) / chunks[side], batch = n * chunks[side], blk = 2 * r * C;
    auto* gram = static_cast<float*>(take(sizes.gram[side]));
    const MatBatch ext{args.ext[side], batch, C, 2 * r, 2 * r, blk};
    be.gemm(Op::transpose, Op::none, 1.0f, ext, ext, 0.0f, MatBatch::packed(gram, batch, 2 * r, 2 * r),
            st);
    e.gram[side] = gram;
    e.chunks[side] = chunks[side];
  }
  e.sums = static_cast<double*>(take(sizes.sums));
  e.out = reinterpret_cast<double*>(out + layout.terms);
  be.rmm_error_terms(e, st);
  return work;
}

std::uint64_t rmm_module_work_bytes(const RmmShape& s, const Backend& be) {
  const WorkSizes w(be, s);
  std::uint64_t total = pool_size_class(w.sums);
  for (int side = 0; side < 2; ++side)
    total += pool_size_class(w.ext[side]) + pool_size_class(w.eig[side]) +
             pool_size_class(w.gram[side]);
  return total;
}

RmmModuleReport rmm_module_report(const RmmShape& s, DType storage, const void* packed) {
  const auto layout = RmmPacked::layout(s, storage);
  const auto* bytes = static_cast<const unsigned char*>(packed);
  const i64 n = s.n, T = kernels::kRmmErrorTerms;
  std::vector<double> d(static_cast<std::size_t>(n * (T + 2)));
  std::memcpy(d.data(), bytes + layout.terms, d.size() * sizeof(double));
  unsigned long long status[2];
  std::memcpy(status, bytes + layout.status, sizeof(status));
  RmmModuleReport rep;
  rep.first_nonfinite = status[0];
  rep.first_unconverged = status[1];
  for (i64 i = 0; i < n; ++i) {
    auto at = [&](int k) { return d[static_cast<std::size_t>(i * T + k)]; };
    using namespace kernels;
    // ‖B̂Â − BA‖² = ‖B̂ D_A + D_B A‖², and with B̂ = B + D_B the terms in B̂ expand into Grams
    // of B and D_B: ⟨B̂ᵀB̂, D_A D_Aᵀ⟩ = ⟨BᵀB + D_BᵀD_B, D_A D_Aᵀ⟩ + 2⟨BᵀD_B, D_A D_Aᵀ⟩ and
    // ⟨B̂ᵀD_B, D_A Aᵀ⟩ = ⟨BᵀD_B + D_BᵀD_B, D_A Aᵀ⟩. Every term is of the size of the error:
    // no large numbers cancel.
    const double hb_da = at(kBtB_DaDa) + at(kDbDb_DaDa) + 2 * at(kBDb_DaDa);
    const double hdb_daa = at(kBDb_DaA) + at(kDbDb_DaA);
    const double num = hb_da + at(kDbDb_AA) + 2 * hdb_daa;
    rep.delta_error.push_back(safe_ratio(num, at(kBtB_AA)));
    rep.delta_norm.push_back(std::sqrt(std::max(at(kBtB_AA), 0.0)));
    rep.factor_error[0].push_back(safe_ratio(at(kDaSq), at(kASq)));
    rep.factor_sq_error[0].push_back(at(kDaSq));
    rep.factor_error[1].push_back(safe_ratio(at(kDbSq), at(kBSq)));
    rep.factor_sq_error[1].push_back(at(kDbSq));
  }
  for (int side = 0; side < 2; ++side)
    for (i64 q = 0; q < n; ++q)  // solver noise below zero is no energy
      rep.spectrum[side].push_back(std::max(d[static_cast<std::size_t>(n * T + side * n + q)], 0.0));
  return rep;
}

void check_rmm_converged(unsigned long long first_unconverged) {
  if (first_unconverged != kernels::kRmmNoKey)
    throw solver_error("rmm: the Jacobi eigensolver did not converge at position " +
                       std::to_string(first_unconverged & ((1ull << 48) - 1)) + " of side " +
                       (first_unconverged >> 48 ? "B" : "A"));
}

RmmInputs rmm_upload(Backend& be, const RmmShape& s, const float* host_a, const float* host_b, Stream st) {
  const i64 n = s.n, r = s.r;
  const std::size_t a_bytes = sizeof(float) * static_cast<std::size_t>(n * r * s.in),
                    b_bytes = sizeof(float) * static_cast<std::size_t>(n * s.out * r);
  RmmInputs in{be.allocate(a_bytes), be.allocate(b_bytes), {}};
  be.upload(in.a.data(), host_a, a_bytes, st);
  be.upload(in.b.data(), host_b, b_bytes, st);
  for (i64 t = 0; t < n; ++t)
    in.tasks.push_back({in.a.f32() + t * r * s.in, in.b.f32() + t * s.out * r, kernels::ElemType::f32,
                        static_cast<std::int32_t>(r), 1.0f});
  return in;
}

RmmModuleResult rmm_module(Backend& be, const RmmShape& s, const float* host_a,
                           const float* host_b, DType storage, Stream st, RmmTerms terms) {
  check_rmm_shape(s);
  const auto inputs = rmm_upload(be, s, host_a, host_b, st);
  const auto layout = RmmPacked::layout(s, storage);
  DeviceBuffer packed = be.allocate(layout.bytes);
  auto work = rmm_module_enqueue(be, s, inputs.tasks, storage, packed.data(), st, terms);
  std::vector<unsigned char> host(layout.bytes);
  be.download(host.data(), packed.data(), layout.bytes, st);
  be.synchronize(st);
  const auto rep = rmm_module_report(s, storage, host.data());
  check_rmm_converged(rep.first_unconverged);
  RmmModuleResult res;
  for (int side = 0; side < 2; ++side) {
    RmmSide& out = side == 0 ? res.a : res.b;
    for (int part = 0; part < 3; ++part) {
      const std::size_t offset = part == 0 ? layout.mean[side] : part == 1 ? layout.basis[side] : layout.coef[side];
      const std::size_t count = layout.tensor_bytes(s, storage, side, part) / dtype_size(storage);
      auto& v = part == 0 ? out.mean : part == 1 ? out.basis : out.coef;
      v.resize(count);
      convert_to_f32(storage, host.data() + offset, v.data(), count);
    }
    out.spectrum = rep.spectrum[side];
    out.factor_error = rep.factor_error[side];
    out.factor_sq_error = rep.factor_sq_error[side];
  }
  res.delta_error = rep.delta_error;
  res.delta_norm = rep.delta_norm;
  return res;
}

}  // namespace revmerge
