#pragma once
// One task's LoRA factors rebuilt from a bundle's stored tensors, for the host and the device
// alike: every element of every output (a module's A, rank × in, or B, out × rank) is one call
// of materialize_element, which reads the stored tensors in their own dtype, sums in a fixed
// order and rounds once to the output's dtype. `revert`, the C interface and a resident bundle
// all go through it (methods/materialize_parts.hpp builds the parts), so every route gives the
// same bits on a backend, and the CPU runs the arithmetic the GPU runs.
#include <cstdint>

#include "kernels/float_bits.hpp"
#include "kernels/host_device.hpp"

namespace revmerge::kernels {

enum class PartKind : std::int32_t {
  /// RMM: out[i, j] = mean[x] + Σ_{c<p} basis[x·p + c] · coef[(q·p + c)·n + task], with
  /// x = q·r + k the position q's component k; (q, k) = (j, i) when `transposed` (A, r × in),
  /// else (i, j) (B, out × r). The sum runs over c in order, in f32, then adds the mean.
  position_sum,
  /// A block of a stored matrix: out[i, j] = src0[(row0 + i)·ld + col0 + j] inside
  /// valid_rows × valid_cols, 0 outside (the rank padding).
  block,
  /// A product of two stored matrices: out[i, j] = Σ_{c<inner} src0[(row0 + i)·ld0 + c] ·
  /// src1[c·ld + col0 + j] inside valid_rows × valid_cols (summed in f64 in order of c), 0
  /// outside.
  product,
};

struct MaterializePart {
  PartKind kind = PartKind::block;
  ElemType out_type = ElemType::f32;
  void* out = nullptr;
  std::int64_t rows = 0, cols = 0;           ///< the output, row-major
  std::int64_t first = 0, first_tile = 0;    ///< its first element and device tile in the call
  const void* src[3] = {};                   ///< position_sum: mean, basis, coef; else src0, src1
  ElemType src_type[3] = {ElemType::f32, ElemType::f32, ElemType::f32};
  std::int64_t r = 0, p = 0, n = 0, task = 0;  ///< position_sum
  bool transposed = false;                     ///< position_sum
  std::int64_t row0 = 0, col0 = 0, ld = 0, ld0 = 0, inner = 0, valid_rows = 0, valid_cols = 0;
  /// Every element is divided by it before rounding: a task's scale taken back out of B (1: the
  /// stored values as they are — x / 1 is x, bit for bit).
  float divisor = 1.0f;
};

/// Element i of an array of the compile-time type S, widened to f32 (load_as_f32's values).
/// Aligned: base is aligned to S (the device's kernels check it once per part), so one load of
/// the type, with no test of the address; else load_unaligned's.
template <ElemType S, bool Aligned = false>
REVMERGE_HD_INLINE float load_typed(const void* base, std::int64_t i) {
  const auto* p = static_cast<const unsigned char*>(base);
  if constexpr (S == ElemType::f32) {
    if constexpr (Aligned) return static_cast<const float*>(base)[i];
    else return load_unaligned<float>(p + i * 4);
  } else if constexpr (S == ElemType::bf16 || S == ElemType::f16) {
    std::uint16_t v;
    if constexpr (Aligned) v = static_cast<const std::uint16_t*>(base)[i];
    else v = load_unaligned<std::uint16_t>(p + i * 2);
    return S == ElemType::bf16 ? bf16_bits_to_f32(v) : f16_bits_to_f32(v);
  } else {
    if constexpr (Aligned) return static_cast<float>(static_cast<const double*>(base)[i]);
    else return static_cast<float>(load_unaligned<double>(p + i * 8));
  }
}

/// Stores v as element i of an array of the compile-time type O (store_rounded's bits). Through
/// a typed pointer, not memcpy, so the loops that call it vectorise: outputs are the caller's
/// buffers, aligned to their element type.
template <ElemType O>
REVMERGE_HD_INLINE void store_typed(void* base, std::int64_t i, float v) {
  if constexpr (O == ElemType::f32) static_cast<float*>(base)[i] = v;
  else if constexpr (O == ElemType::bf16) static_cast<std::uint16_t*>(base)[i] = f32_to_bf16_bits(v);
  else static_cast<std::uint16_t*>(base)[i] = f32_to_f16_bits(v);
}

/// Element (i, j) of a position_sum part stored as S, before rounding; P > 0 fixes the basis
/// size t.p at compile time (the loop unrolled, its loads issued together), 0 reads it;
/// Aligned as load_typed's.
template <ElemType S, int P = 0, bool Aligned = false>
REVMERGE_HD_INLINE float position_sum_element(const MaterializePart& t, std::int64_t i, std::int64_t j) {
  const std::int64_t p = P > 0 ? P : t.p;
  const std::int64_t q = t.transposed ? j : i, k = t.transposed ? i : j, x = q * t.r + k;
  float acc = 0.0f;
  for (std::int64_t c = 0; c < p; ++c)
    acc += load_typed<S, Aligned>(t.src[1], x * p + c) * load_typed<S, Aligned>(t.src[2], (q * p + c) * t.n + t.task);
  return load_typed<S, Aligned>(t.src[0], x) + acc;
}

/// Element (i, j) of a part whose stored tensors are all of type S, before rounding.
template <ElemType S>
REVMERGE_HD_INLINE float materialize_element_typed(const MaterializePart& t, std::int64_t i, std::int64_t j) {
  switch (t.kind) {
    case PartKind::position_sum: return position_sum_element<S>(t, i, j);
    case PartKind::block:
      if (i >= t.valid_rows || j >= t.valid_cols) return 0.0f;
      return load_typed<S>(t.src[0], (t.row0 + i) * t.ld + t.col0 + j);
    case PartKind::product: {
      if (i >= t.valid_rows || j >= t.valid_cols) return 0.0f;
      double acc = 0.0;
      for (std::int64_t c = 0; c < t.inner; ++c)
        acc += static_cast<double>(load_typed<S>(t.src[0], (t.row0 + i) * t.ld0 + c)) *
               static_cast<double>(load_typed<S>(t.src[1], c * t.ld + t.col0 + j));
      return static_cast<float>(acc);
    }
  }
  return 0.0f;
}

/// The stored type a part's sources share (a bundle stores one dtype); parts are made so.
REVMERGE_HD_INLINE ElemType source_type(const MaterializePart& t) { return t.src_type[0]; }

/// Element (i, j) of a part, before rounding to its output dtype.
REVMERGE_HD_INLINE float materialize_element(const MaterializePart& t, std::int64_t i, std::int64_t j) {
  switch (source_type(t)) {
    case ElemType::f32: return materialize_element_typed<ElemType::f32>(t, i, j);
    case ElemType::bf16: return materialize_element_typed<ElemType::bf16>(t, i, j);
    case ElemType::f16: return materialize_element_typed<ElemType::f16>(t, i, j);
    default: return materialize_element_typed<ElemType::f64>(t, i, j);
  }
}

/// The device's unit of work: a square tile of a part's output, kMaterializeTile on a side.
inline constexpr std::int64_t kMaterializeTile = 32;

/// A part's device tiles: its output cut into kMaterializeTile squares, row of tiles by row.
REVMERGE_HD_INLINE std::int64_t materialize_tiles(const MaterializePart& t) {
  constexpr std::int64_t s = kMaterializeTile;
  return (t.rows + s - 1) / s * ((t.cols + s - 1) / s);
}

/// The call's parts, ordered by `first` (and `first_tile`); what the backends launch.
struct MaterializeArgs {
  const MaterializePart* parts = nullptr;
  std::int64_t count = 0;
  std::int64_t elements = 0, tiles = 0;  ///< totals over the parts
  /// What every part stores and writes (one bundle's dtype, one call's output dtype): the
  /// device picks its kernel by them without reading the parts.
  ElemType source_type = ElemType::f32, out_type = ElemType::f32;
};

/// The last part whose `Field` (`first` or `first_tile`) is at most v, by binary search.
template <std::int64_t MaterializePart::*Field>
REVMERGE_HD_INLINE std::int64_t materialize_last_part_at(const MaterializeArgs& a, std::int64_t v) {
  std::int64_t lo = 0, hi = a.count - 1;
  while (lo < hi) {
    const std::int64_t mid = (lo + hi + 1) / 2;
    if (a.parts[mid].*Field <= v) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/// The part device tile `tile` lies in (a part with no tiles shares its first tile with the
/// next and is passed over).
REVMERGE_HD_INLINE std::int64_t materialize_part_of_tile(const MaterializeArgs& a, std::int64_t tile) {
  return materialize_last_part_at<&MaterializePart::first_tile>(a, tile);
}

/// The part of `tile`, given `part`, the part of an earlier tile of the call: the parts after it
/// walked in order. A device block takes several tiles in turn, mostly of one part, so it finds
/// its first tile's part once and each later tile's here, usually without a load.
REVMERGE_HD_INLINE std::int64_t materialize_part_from(const MaterializeArgs& a, std::int64_t part,
                                                      std::int64_t tile) {
  while (part + 1 < a.count && a.parts[part + 1].first_tile <= tile) ++part;
  return part;
}

/// Most tiles a device block takes in turn (materialize_tiles_per_block).
inline constexpr std::int64_t kMaterializeMostTilesPerBlock = 16;

/// Tiles a device block takes in turn when `resident` blocks fit on the device at once: as
/// many as leave at least eight waves of blocks (a block's start — its part found and copied —
/// then counts once for several tiles, while the last wave stays short), between 1 and
/// kMaterializeMostTilesPerBlock. A module alone (hundreds of tiles) keeps a block a tile.
REVMERGE_HD_INLINE std::int64_t materialize_tiles_per_block(std::int64_t tiles, std::int64_t resident) {
  const std::int64_t per = tiles / (8 * (resident > 0 ? resident : 1));
  return per < 1 ? 1 : per > kMaterializeMostTilesPerBlock ? kMaterializeMostTilesPerBlock : per;
}

/// The part element e lies in.
REVMERGE_HD_INLINE std::int64_t materialize_part_of(const MaterializeArgs& a, std::int64_t e) {
  return materialize_last_part_at<&MaterializePart::first>(a, e);
}

/// One call per output element of the whole call (the device's layout: one thread each).
struct MaterializeElements {
  MaterializeArgs a;
  REVMERGE_HD void operator()(std::int64_t e) const {
    const auto& t = a.parts[materialize_part_of(a, e)];
    const std::int64_t local = e - t.first, i = local / t.cols, j = local % t.cols;
    store_rounded(t.out, local, t.out_type, materialize_element(t, i, j) / t.divisor);
  }
};

template <ElemType S, ElemType O>
REVMERGE_HD_INLINE void materialize_tile_typed(const MaterializePart& t, std::int64_t i0, std::int64_t i1,
                                               std::int64_t j0, std::int64_t j1) {
  for (std::int64_t i = i0; i < i1; ++i)
    for (std::int64_t j = j0; j < j1; ++j) {
      const float v = materialize_element_typed<S>(t, i, j) / t.divisor;
      store_typed<O>(t.out, i * t.cols + j, v);
    }
}

template <ElemType S>
REVMERGE_HD_INLINE void materialize_tile_from(const MaterializePart& t, std::int64_t i0, std::int64_t i1,
                                              std::int64_t j0, std::int64_t j1) {
  switch (t.out_type) {
    case ElemType::bf16: return materialize_tile_typed<S, ElemType::bf16>(t, i0, i1, j0, j1);
    case ElemType::f16: return materialize_tile_typed<S, ElemType::f16>(t, i0, i1, j0, j1);
    default: return materialize_tile_typed<S, ElemType::f32>(t, i0, i1, j0, j1);
  }
}

/// Rows [i0, i1) × columns [j0, j1) of a part, row by row (the host's layout: a tile per step,
/// so a transposed part reads its positions' stored values from cache), the types chosen once
/// per tile; each element's value and rounding are materialize_element's and store_rounded's.
REVMERGE_HD_INLINE void materialize_tile(const MaterializePart& t, std::int64_t i0, std::int64_t i1,
                                         std::int64_t j0, std::int64_t j1) {
  switch (source_type(t)) {
    case ElemType::f32: return materialize_tile_from<ElemType::f32>(t, i0, i1, j0, j1);
    case ElemType::bf16: return materialize_tile_from<ElemType::bf16>(t, i0, i1, j0, j1);
    case ElemType::f16: return materialize_tile_from<ElemType::f16>(t, i0, i1, j0, j1);
    default: return materialize_tile_from<ElemType::f64>(t, i0, i1, j0, j1);
  }
}

}  // namespace revmerge::kernels
