// The CPU backend's materialisation (Backend::materialize): a part's tiles handed out to the
// backend's threads, each tile by the loops of cpu_materialize_tiles.hpp for its stored type —
// per element the operations of kernels::materialize_element in its order, so the GPU's bits.
#include <algorithm>
#include <utility>
#include <vector>

#include "backend/cpu_backend.hpp"
#include "backend/cpu_materialize_tiles.hpp"
#include "backend/cpu_parallel.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

void cpu_materialize_tile(const kernels::MaterializePart& t, i64 i0, i64 i1, i64 j0, i64 j1) {
  // RMM past 64 directions takes the element routine.
  if (t.kind == kernels::PartKind::position_sum && t.p > 64) return kernels::materialize_tile(t, i0, i1, j0, j1);
  switch (kernels::source_type(t)) {
    case kernels::ElemType::f32: return cpu::materialize_tile_f32(t, i0, i1, j0, j1);
    case kernels::ElemType::bf16: return cpu::materialize_tile_bf16(t, i0, i1, j0, j1);
    case kernels::ElemType::f16: return cpu::materialize_tile_f16(t, i0, i1, j0, j1);
    default: return cpu::materialize_tile_f64(t, i0, i1, j0, j1);
  }
}

}  // namespace

void CpuBackend::materialize(const kernels::MaterializeArgs& args, Stream) {
  // Tiles of 256 rows × 64 columns: a transposed RMM part (A, r × in) then reads 64 positions'
  // mean, basis and coefficients from cache for every row.
  // Blocks (copies) take whole rows instead, ~16 K elements a tile, so each stored row is read
  // in one sweep.
  static constexpr i64 kRows = 256, kCols = 64, kBlockTile = 16384;
  const auto shape = [](const kernels::MaterializePart& p) -> std::pair<i64, i64> {
    if (p.kind != kernels::PartKind::block) return {kRows, kCols};
    const i64 cols = std::max<i64>(p.cols, 1);
    return {std::max<i64>(kBlockTile / cols, 1), cols};
  };
  const auto tiles = [&](const kernels::MaterializePart& p) {
    const auto [h, w] = shape(p);
    return (p.rows + h - 1) / h * ((p.cols + w - 1) / w);
  };
  std::vector<i64> first(static_cast<std::size_t>(args.count) + 1, 0);
  for (i64 p = 0; p < args.count; ++p) first[p + 1] = first[p] + tiles(args.parts[p]);
  cpu::parallel_for(threads_, first.back(), [&](i64 u) {
    const i64 p = std::upper_bound(first.begin(), first.end(), u) - first.begin() - 1;
    const auto& part = args.parts[p];
    const auto [h, w] = shape(part);
    const i64 across = (part.cols + w - 1) / w, local = u - first[p];
    const i64 i0 = local / across * h, j0 = local % across * w;
    cpu_materialize_tile(part, i0, std::min(part.rows, i0 + h), j0, std::min(part.cols, j0 + w));
  }, true);
}

}  // namespace revmerge
