#pragma once
// The CPU's materialisation tiles (internal to the CPU backend): RMM's sums, blocks and products
// over a tile of one part, templated on the stored and output element types. Each stored type's
// tiles are compiled in a file of their own (cpu_materialize_<type>.cpp, target clones for AVX2
// and AVX-512), so the four build in parallel: together in one file they took ~3 minutes, the
// longest step of a build on any number of cores.
#include <algorithm>
#include <cstdint>

#include "kernels/materialize.hpp"

namespace revmerge::cpu {

using i64 = std::int64_t;

// The CPU's materialisation: tiles of blocks, RMM's sums and products in loops the compiler
// vectorises, each element's operations those of MaterializeElements (the element routine, then
// the division by the part's divisor; tests compare the two). All inlined into each stored
// type's materialize_tile_<type>, so its target clones vectorise them for the wider units.
// RMM's sum over a tile, vectorised across the tile: per element the same operations in the
// same order as kernels::materialize_element (acc = 0; acc += basis·coef for c = 0 … p − 1; mean
// + acc), so the same bits, with each position's coefficients read once. The common P (1, 2, 4)
// are fixed at compile time, so the basis, read with a stride of P, loads in whole vectors
// (~1.2x on a 7b RMM task at P = 2 and 4).
template <kernels::ElemType S, kernels::ElemType O, int FixedP = 0>
[[gnu::always_inline]] inline void position_sum_tile(const kernels::MaterializePart& t, i64 i0, i64 i1, i64 j0, i64 j1) {
  using kernels::load_typed;
  const i64 p = FixedP > 0 ? FixedP : t.p;
  constexpr i64 kMax = 256;
  float w[64], acc[kMax];
  const auto store = [&](i64 at, float v) {
    kernels::store_typed<O>(t.out, at, v);
  };
  // Position q's components [k0, k1) summed in acc[0 …), then stored where out_index says.
  const auto position = [&](i64 q, i64 k0, i64 k1, auto&& out_index) {
    for (i64 c = 0; c < p; ++c) w[c] = load_typed<S>(t.src[2], (q * p + c) * t.n + t.task);
    const i64 width = k1 - k0, x0 = q * t.r + k0;
    for (i64 k = 0; k < width; ++k) acc[k] = 0.0f;
    for (i64 c = 0; c < p; ++c)
      for (i64 k = 0; k < width; ++k) acc[k] += load_typed<S>(t.src[1], (x0 + k) * p + c) * w[c];
    for (i64 k = 0; k < width; ++k) store(out_index(k0 + k), (load_typed<S>(t.src[0], x0 + k) + acc[k]) / t.divisor);
  };
  if (t.transposed) {  // A: rows are components, columns positions; a tile's columns gathered
    constexpr i64 kCols = 64;  // in a buffer first, so its rows are written whole
    float tile[kMax * kCols];
    for (i64 q0 = j0; q0 < j1; q0 += kCols) {
      const i64 q1 = std::min(j1, q0 + kCols), width = q1 - q0;
      for (i64 k0 = i0; k0 < i1; k0 += kMax) {
        const i64 k1 = std::min(i1, k0 + kMax);
        for (i64 q = q0; q < q1; ++q) {
          float* column = tile + (q - q0);
          for (i64 c = 0; c < p; ++c) w[c] = load_typed<S>(t.src[2], (q * p + c) * t.n + t.task);
          const i64 x0 = q * t.r + k0;
          for (i64 k = 0; k < k1 - k0; ++k) acc[k] = 0.0f;
          for (i64 c = 0; c < p; ++c)
            for (i64 k = 0; k < k1 - k0; ++k) acc[k] += load_typed<S>(t.src[1], (x0 + k) * p + c) * w[c];
          for (i64 k = 0; k < k1 - k0; ++k) column[k * kCols] = (load_typed<S>(t.src[0], x0 + k) + acc[k]) / t.divisor;
        }
        for (i64 k = k0; k < k1; ++k)
          for (i64 q = 0; q < width; ++q) store(k * t.cols + q0 + q, tile[(k - k0) * kCols + q]);
      }
    }
  } else {  // B: rows are positions
    for (i64 q = i0; q < i1; ++q)
      for (i64 k0 = j0; k0 < j1; k0 += kMax)
        position(q, k0, std::min(j1, k0 + kMax), [&](i64 k) { return q * t.cols + k; });
  }
}

// Rows ahead whose stored segment a block tile asks for early when segments are short.
constexpr i64 kPrefetchRows = 8;

// A block of a stored matrix (zero outside its valid rows and columns): each element loaded and
// rounded as kernels::materialize_element and store_rounded do, a row segment at a time.
template <kernels::ElemType S, kernels::ElemType O>
[[gnu::always_inline]] inline void block_tile(const kernels::MaterializePart& t, i64 i0, i64 i1, i64 j0, i64 j1) {
  const auto store = [&](i64 at, float v) {
    kernels::store_typed<O>(t.out, at, v);
  };
  const i64 size = kernels::elem_size(S);
  const i64 segment = (std::clamp<i64>(t.valid_cols, j0, j1) - j0) * size;
  // A short segment at a long stride (a rank bundle's B: a task's own columns of out × Σk)
  // leaves the hardware prefetcher behind, which stops at each page: every row would wait on
  // memory (a task's B came back ~10x slower than its A per byte). Rows below are asked for
  // ahead; wide rows stream on their own.
  const bool ahead = segment > 0 && segment <= 1024 && t.ld * size > segment + 64;
  const auto* bytes = static_cast<const unsigned char*>(t.src[0]);
  const float zero = 0.0f / t.divisor;  // the padding as the element routine gives it
  for (i64 i = i0; i < i1; ++i) {
    const i64 valid = i < t.valid_rows ? std::clamp<i64>(t.valid_cols, j0, j1) : j0;
    const i64 from = (t.row0 + i) * t.ld + t.col0, to = i * t.cols;
    if (ahead && i + kPrefetchRows < t.valid_rows) {
      const auto* next = bytes + (from + kPrefetchRows * t.ld + j0) * size;
      for (i64 b = 0; b < segment; b += 64) __builtin_prefetch(next + b);
      __builtin_prefetch(next + segment - 1);
    }
    for (i64 j = j0; j < valid; ++j) store(to + j, kernels::load_typed<S>(t.src[0], from + j) / t.divisor);
    for (i64 j = valid; j < j1; ++j) store(to + j, zero);
  }
}

// A product part (the shared bases: a task's cores times a basis) over a tile: out[i, j] =
// Σ_c src0[i, c] · src1[c, j] in f64, c in order, rounded once — materialize_element's sums,
// one multiplication and one addition per step (no contraction), carried for a block of
// kProductRows × kProductCols elements at once, so each step reads one row of src1 for four rows
// of output and runs on vector lanes across the columns. The same bits; elements outside the
// full blocks take the element routine itself.
constexpr i64 kProductRows = 4, kProductCols = 32;

template <kernels::ElemType S, kernels::ElemType O>
[[gnu::always_inline]] inline void product_block(const kernels::MaterializePart& t, i64 i, i64 j) {
  double acc[kProductRows][kProductCols] = {};
  for (i64 c = 0; c < t.inner; ++c) {
    double b[kProductCols];
    const i64 at = c * t.ld + t.col0 + j;
    for (i64 y = 0; y < kProductCols; ++y) b[y] = static_cast<double>(kernels::load_typed<S>(t.src[1], at + y));
    for (i64 x = 0; x < kProductRows; ++x) {
      const double a = static_cast<double>(kernels::load_typed<S>(t.src[0], (t.row0 + i + x) * t.ld0 + c));
      for (i64 y = 0; y < kProductCols; ++y) acc[x][y] += a * b[y];
    }
  }
  for (i64 x = 0; x < kProductRows; ++x)
    for (i64 y = 0; y < kProductCols; ++y)
      kernels::store_typed<O>(t.out, (i + x) * t.cols + j + y, static_cast<float>(acc[x][y]) / t.divisor);
}

template <kernels::ElemType S, kernels::ElemType O>
[[gnu::always_inline]] inline void product_tile(const kernels::MaterializePart& t, i64 i0, i64 i1, i64 j0, i64 j1) {
  // Full blocks inside the valid rows and columns; the rest (edges, the zero padding) element
  // by element.
  const i64 rows = std::max<i64>(std::min(i1, t.valid_rows) - i0, 0) / kProductRows * kProductRows;
  const i64 cols = std::max<i64>(std::min(j1, t.valid_cols) - j0, 0) / kProductCols * kProductCols;
  for (i64 i = i0; i < i0 + rows; i += kProductRows)
    for (i64 j = j0; j < j0 + cols; j += kProductCols) product_block<S, O>(t, i, j);
  const auto element = [&](i64 i, i64 j) {
    kernels::store_typed<O>(t.out, i * t.cols + j, kernels::materialize_element_typed<S>(t, i, j) / t.divisor);
  };
  for (i64 i = i0; i < i1; ++i)
    for (i64 j = (i < i0 + rows ? j0 + cols : j0); j < j1; ++j) element(i, j);
}

template <kernels::ElemType S, kernels::ElemType O>
[[gnu::always_inline]] inline void fast_tile(const kernels::MaterializePart& t, i64 i0, i64 i1, i64 j0, i64 j1) {
  if (t.kind == kernels::PartKind::block) return block_tile<S, O>(t, i0, i1, j0, j1);
  if (t.kind == kernels::PartKind::product) return product_tile<S, O>(t, i0, i1, j0, j1);
  switch (t.p) {
    case 1: return position_sum_tile<S, O, 1>(t, i0, i1, j0, j1);
    case 2: return position_sum_tile<S, O, 2>(t, i0, i1, j0, j1);
    case 4: return position_sum_tile<S, O, 4>(t, i0, i1, j0, j1);
    default: return position_sum_tile<S, O>(t, i0, i1, j0, j1);
  }
}

template <kernels::ElemType S>
[[gnu::always_inline]] inline void fast_tile_from(const kernels::MaterializePart& t, i64 i0, i64 i1, i64 j0, i64 j1) {
  switch (t.out_type) {
    case kernels::ElemType::bf16: return fast_tile<S, kernels::ElemType::bf16>(t, i0, i1, j0, j1);
    case kernels::ElemType::f16: return fast_tile<S, kernels::ElemType::f16>(t, i0, i1, j0, j1);
    default: return fast_tile<S, kernels::ElemType::f32>(t, i0, i1, j0, j1);
  }
}

/// A tile [i0, i1) × [j0, j1) of a part whose stored tensors are all of the named type (the
/// fast loops above for RMM up to 64 directions; cpu_materialize.cpp dispatches).
void materialize_tile_f32(const kernels::MaterializePart& t, i64 i0, i64 i1, i64 j0, i64 j1);
void materialize_tile_bf16(const kernels::MaterializePart& t, i64 i0, i64 i1, i64 j0, i64 j1);
void materialize_tile_f16(const kernels::MaterializePart& t, i64 i0, i64 i1, i64 j0, i64 j1);
void materialize_tile_f64(const kernels::MaterializePart& t, i64 i0, i64 i1, i64 j0, i64 j1);

// The definition of materialize_tile_<type>, one in each cpu_materialize_<type>.cpp, compiled
// again for AVX2 and AVX-512 where the CPU has them (the same IEEE operations: the same bits).
#if defined(__x86_64__)
#define REVMERGE_MATERIALIZE_CLONES [[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#else
#define REVMERGE_MATERIALIZE_CLONES
#endif
#define REVMERGE_DEFINE_MATERIALIZE_TILE(type)                                                         \
  REVMERGE_MATERIALIZE_CLONES void materialize_tile_##type(const kernels::MaterializePart& t, i64 i0, \
                                                           i64 i1, i64 j0, i64 j1) {                   \
    fast_tile_from<kernels::ElemType::type>(t, i0, i1, j0, j1);                                        \
  }

}  // namespace revmerge::cpu
