#include "methods/materialize_parts.hpp"

#include <algorithm>
#include <iterator>
#include <stdexcept>

#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;
using kernels::MaterializePart;
using kernels::PartKind;

// The offset of entry `index` in a stack of entries of `sizes`, and their total.
std::pair<i64, i64> stack_offset(const std::vector<i64>& sizes, i64 index) {
  i64 total = 0, first = 0;
  for (i64 t = 0; t < static_cast<i64>(sizes.size()); ++t) {
    if (t == index) first = total;
    total += sizes[t];
  }
  return {first, total};
}

MaterializePart output(void* out, i64 rows, i64 cols, kernels::ElemType type) {
  MaterializePart p;
  p.out = out, p.rows = rows, p.cols = cols, p.out_type = type;
  return p;
}

void set_source(MaterializePart& p, int slot, const StoredTensor& s) {
  p.src[slot] = s.data;
  p.src_type[slot] = s.type;
}

// Entry `index` of a stack of truncations (`M.lora_A.<part>` Σk × in, `M.lora_B.<part>` out × Σk).
void stacked(std::array<MaterializePart, 2>& p, const BundleModule& mod, const char* part,
             const std::vector<i64>& kept, i64 index, const StoredTensorLookup& lookup) {
  const auto [first, total] = stack_offset(kept, index);
  const i64 k = kept.at(index);
  p[0].kind = p[1].kind = PartKind::block;
  if (k > 0) {
    set_source(p[0], 0, lookup(bundle_tensor_name(mod.path, "lora_A", part)));
    set_source(p[1], 0, lookup(bundle_tensor_name(mod.path, "lora_B", part)));
  }
  p[0].row0 = first, p[0].ld = mod.in, p[0].valid_rows = k, p[0].valid_cols = mod.in;
  p[1].col0 = first, p[1].ld = total, p[1].valid_rows = mod.out, p[1].valid_cols = k;
}

// The kernel reads a part's sources as one type (a bundle stores one dtype): a module whose
// tensors differ is refused.
void check_one_type(const BundleModule& mod, std::array<MaterializePart, 2>& parts) {
  for (auto& p : parts)
    for (int s = 1; s < 3; ++s) {
      if (!p.src[s]) {
        p.src_type[s] = p.src_type[0];
        continue;
      }
      if (p.src_type[s] != p.src_type[0])
        throw format_error("module '" + mod.path + "': its stored tensors have different dtypes");
    }
}

std::array<MaterializePart, 2> build_parts(const BundleModule& mod, i64 n, i64 task,
                                           const StoredTensorLookup& lookup, void* a, void* b,
                                           kernels::ElemType out_type) {
  const i64 r = mod.rank;
  std::array<MaterializePart, 2> p{output(a, r, mod.in, out_type), output(b, mod.out, r, out_type)};
  if (task >= n) {
    stacked(p, mod, "added", mod.added_kept_ranks, task - n, lookup);
    return p;
  }
  switch (mod.representation) {
    case Representation::rank:
      stacked(p, mod, "factors", mod.kept_ranks, task, lookup);
      return p;
    case Representation::shared_rows: {
      const i64 k = mod.shared_rank;
      p[0].kind = p[1].kind = PartKind::block;
      set_source(p[0], 0, lookup(bundle_tensor_name(mod.path, "lora_A", "shared")));
      set_source(p[1], 0, lookup(bundle_tensor_name(mod.path, "lora_B", "shared")));
      p[0].ld = mod.in, p[0].valid_rows = k, p[0].valid_cols = mod.in;
      p[1].col0 = task * k, p[1].ld = n * k, p[1].valid_rows = mod.out, p[1].valid_cols = k;
      return p;
    }
    case Representation::shared: {
      const auto ranks = std::vector<i64>(mod.task_ranks.begin(), mod.task_ranks.begin() + n);
      const auto [first, total] = stack_offset(ranks, task);
      const i64 rt = ranks[task], kv = mod.shared_basis[0], ku = mod.shared_basis[1];
      p[0].kind = p[1].kind = PartKind::product;
      // A' = cores_A[rows of the task] · Vᵀ;  B' = U · cores_B[columns of the task].
      set_source(p[0], 0, lookup(bundle_tensor_name(mod.path, "lora_A", "cores")));
      set_source(p[0], 1, lookup(bundle_tensor_name(mod.path, "lora_A", "shared")));
      p[0].row0 = first, p[0].ld0 = kv, p[0].ld = mod.in, p[0].inner = kv;
      p[0].valid_rows = rt, p[0].valid_cols = mod.in;
      set_source(p[1], 0, lookup(bundle_tensor_name(mod.path, "lora_B", "shared")));
      set_source(p[1], 1, lookup(bundle_tensor_name(mod.path, "lora_B", "cores")));
      p[1].ld0 = ku, p[1].ld = total, p[1].col0 = first, p[1].inner = ku;
      p[1].valid_rows = mod.out, p[1].valid_cols = rt;
      return p;
    }
    case Representation::rmm:
      break;
  }
  for (int s = 0; s < 2; ++s) {
    const char* side = s == 0 ? "lora_A" : "lora_B";
    auto& q = p[s];
    q.kind = PartKind::position_sum;
    q.transposed = s == 0;  // A's positions are its columns
    q.r = r, q.p = mod.basis[s], q.n = n, q.task = task;
    set_source(q, 0, lookup(bundle_tensor_name(mod.path, side, "mean")));
    if (q.p > 0) {
      set_source(q, 1, lookup(bundle_tensor_name(mod.path, side, "basis")));
      set_source(q, 2, lookup(bundle_tensor_name(mod.path, side, "coef")));
    }
  }
  return p;
}

}  // namespace

kernels::ElemType kernel_type(DType t, const std::string& where) {
  switch (t) {
    case DType::F32: return kernels::ElemType::f32;
    case DType::F16: return kernels::ElemType::f16;
    case DType::BF16: return kernels::ElemType::bf16;
    case DType::F64: return kernels::ElemType::f64;
    default:
      throw unsupported_error(where + ": dtype " + std::string(dtype_name(t)) + " is not a float type revmerge merges");
  }
}

std::array<MaterializePart, 2> materialize_parts(const BundleModule& mod, i64 n, i64 task,
                                                 const StoredTensorLookup& lookup, void* a, void* b,
                                                 kernels::ElemType out_type) {
  auto parts = build_parts(mod, n, task, lookup, a, b, out_type);
  check_one_type(mod, parts);
  return parts;
}

kernels::MaterializeArgs number_parts(std::vector<MaterializePart>& parts, const MaterializePart* table) {
  kernels::MaterializeArgs args;
  // A part with no stored tensor (a task that keeps nothing of a module: zeros) reads no type; it
  // takes the call's, which the kernels choose their code by.
  const auto reads = [](const MaterializePart& p) { return p.src[0] != nullptr; };
  const auto first = std::find_if(parts.begin(), parts.end(), reads);
  if (first != parts.end()) args.source_type = kernels::source_type(*first);
  if (!parts.empty()) args.out_type = parts[0].out_type;
  for (auto& p : parts) {
    if (!reads(p)) std::fill(std::begin(p.src_type), std::end(p.src_type), args.source_type);
    if (kernels::source_type(p) != args.source_type || p.out_type != args.out_type)
      throw std::logic_error("materialize: one call's parts store or write different dtypes");
    p.first = args.elements, p.first_tile = args.tiles;
    args.elements += p.rows * p.cols;
    args.tiles += kernels::materialize_tiles(p);
  }
  args.parts = table;
  args.count = static_cast<i64>(parts.size());
  return args;
}

}  // namespace revmerge
