// The CPU backend's per-position routines (host/kernels/): positions in blocks handed out to the
// backend's threads as they free up, each position run by its thread alone (a SerialTeam) in
// that thread's scratch, which stays in its core's cache, the eigensolves of eight positions in
// lockstep on vector lanes. The arithmetic is the GPU's: the library is compiled without FMA
// contraction (host/CMakeLists.txt).
#include <algorithm>
#include <utility>
#include <vector>

#include "backend/cpu_backend.hpp"
#include "backend/cpu_parallel.hpp"
#include "kernels/materialize.hpp"
#include "kernels/rmm_errors.hpp"
#include "backend/cpu_jacobi_lanes.hpp"
#include "kernels/rmm_jacobi.hpp"
#include "kernels/rmm_position.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Positions run eight at a time: each prepared and finished on its own, their eigensolves in
// lockstep, one position per vector lane (kernels::rmm_jacobi_lanes: the same bits as alone).
constexpr int kLanes = cpu::kJacobiLanes;

// Positions per block: side A's positions of a block have their columns read together.
constexpr i64 kBlock = 32;

// Doubles of one thread's working memory: each lane's scratch, the lockstep matrices, and the
// block's A columns (kBlock × n × r floats).
i64 work_doubles(i64 n, i64 r) {
  const i64 N = kernels::rmm_jacobi_order(n);
  return kLanes * (kernels::rmm_scratch_bytes(n, r) / 8) + 2 * N * N * kLanes +
         (kBlock * n * r + 1) / 2;
}

// Side A's positions [j0, j1) read together: for each task and row k the block's neighbouring
// columns are one run of memory (one position alone would read each row from another page, and
// rows a power of two apart fall into the same cache sets), widened into
// tile[(t · r + k) · kBlock + (j − j0)]: runs in, runs out.
void stage_a_columns(const kernels::RmmModuleArgs& args, i64 n, i64 j0, i64 j1, float* tile) {
  const i64 r = args.r, width = j1 - j0;
  for (i64 t = 0; t < n; ++t) {
    const auto& f = args.tasks[t];
    for (i64 k = 0; k < f.rank; ++k) {
      float* to = tile + (t * r + k) * kBlock;
      const i64 from = k * args.in + j0;
      switch (f.type) {  // one loop per element type, over contiguous values
        case kernels::ElemType::bf16:
          for (i64 jj = 0; jj < width; ++jj) to[jj] = kernels::load_as_f32(f.a, from + jj, kernels::ElemType::bf16);
          break;
        case kernels::ElemType::f32:
          for (i64 jj = 0; jj < width; ++jj) to[jj] = kernels::load_as_f32(f.a, from + jj, kernels::ElemType::f32);
          break;
        default:
          for (i64 jj = 0; jj < width; ++jj) to[jj] = kernels::load_as_f32(f.a, from + jj, f.type);
      }
    }
  }
}

// Positions [first, last) of the module (A's, then B's), with n fixed at compile time when
// kTasks is not 0.
template <int kTasks>
[[gnu::always_inline]] inline void positions(const kernels::RmmModuleArgs& args, i64 first,
                                             i64 last, double* work) {
  const i64 n = kTasks ? kTasks : args.n, N = kernels::rmm_jacobi_order(n);
  const i64 scratch = kernels::rmm_scratch_bytes(n, args.r) / 8;
  double* a = work + kLanes * scratch;
  double* vt = a + N * N * kLanes;
  auto* tile = reinterpret_cast<float*>(vt + N * N * kLanes);
  const i64 a_end = std::min(last, args.in);
  if (first < a_end) stage_a_columns(args, n, first, a_end, tile);
  const kernels::SerialTeam team;
  for (i64 g0 = first; g0 < last; g0 += kLanes) {
    const int count = static_cast<int>(std::min<i64>(kLanes, last - g0));
    bool active[kLanes], converged[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      active[l] = false;
      if (l < count) {
        const i64 g = g0 + l;
        const int side = g < args.in ? 0 : 1;
        active[l] = !kernels::rmm_prepare<kernels::SerialTeam, kTasks>(
            team, args, side, side == 0 ? g : g - args.in, work + l * scratch,
            side == 0 ? tile + (g - first) : nullptr, kBlock);
      }
      const auto s = kernels::RmmScratch::carve(work + l * scratch, n, args.r);
      for (i64 i = 0; i < N * N; ++i) {
        a[i * kLanes + l] = active[l] ? s.g[i] : 0.0;
        vt[i * kLanes + l] = active[l] ? s.vt[i] : 0.0;
      }
    }
    cpu::jacobi_lanes(a, vt, N, active, converged);
    for (int l = 0; l < count; ++l) {
      const auto s = kernels::RmmScratch::carve(work + l * scratch, n, args.r);
      for (i64 i = 0; i < N * N; ++i) s.g[i] = a[i * kLanes + l], s.vt[i] = vt[i * kLanes + l];
      const i64 g = g0 + l;
      const int side = g < args.in ? 0 : 1;
      kernels::rmm_finish<kernels::SerialTeam, kTasks>(team, args, side,
                                                       side == 0 ? g : g - args.in,
                                                       work + l * scratch, converged[l]);
    }
  }
}

// On this thread. Compiled again for AVX2 and AVX-512 where the CPU has them: wider vectors for
// the same IEEE operations (no FMA: the file is compiled without contraction), so the same bits
// on every machine. The common task counts get loops of fixed length.
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void run_positions(const kernels::RmmModuleArgs& args, i64 first, i64 last, double* work) {
  switch (args.n) {
    case 8: return positions<8>(args, first, last, work);
    default: return positions<0>(args, first, last, work);
  }
}

// The CPU's materialisation: tiles of blocks, RMM's sums and products in loops the compiler
// vectorises, each element's operations those of MaterializeElements (the element routine, then
// the division by the part's divisor; tests compare the two). All inlined into
// cpu_materialize_tile, so its target clones vectorise them for the wider units.
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

[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
void cpu_materialize_tile(const kernels::MaterializePart& t, i64 i0, i64 i1, i64 j0, i64 j1) {
  // RMM past 64 directions takes the element routine.
  if (t.kind == kernels::PartKind::position_sum && t.p > 64) return kernels::materialize_tile(t, i0, i1, j0, j1);
  switch (kernels::source_type(t)) {
    case kernels::ElemType::f32: return fast_tile_from<kernels::ElemType::f32>(t, i0, i1, j0, j1);
    case kernels::ElemType::bf16: return fast_tile_from<kernels::ElemType::bf16>(t, i0, i1, j0, j1);
    case kernels::ElemType::f16: return fast_tile_from<kernels::ElemType::f16>(t, i0, i1, j0, j1);
    default: return fast_tile_from<kernels::ElemType::f64>(t, i0, i1, j0, j1);
  }
}

}  // namespace

void CpuBackend::rmm_positions(const kernels::RmmModuleArgs& args, Stream) {
  const i64 total = args.in + args.out;
  // Blocks of neighbouring positions, handed out dynamically (positions differ in Jacobi
  // sweeps).
  const auto doubles = static_cast<std::size_t>(work_doubles(args.n, args.r));
  cpu::parallel_for(
      threads_, (total + kBlock - 1) / kBlock,
      [&](i64 block) {
        thread_local std::vector<double> work;
        work.resize(doubles + 8);  // the lockstep matrices 64-byte aligned
        const auto skew = (64 - reinterpret_cast<std::uintptr_t>(work.data()) % 64) % 64 / 8;
        run_positions(args, block * kBlock, std::min(total, (block + 1) * kBlock),
                      work.data() + skew);
      },
      /*dynamic=*/true);
}

void CpuBackend::rmm_error_terms(const kernels::RmmErrorArgs& args, Stream) {
  const kernels::RmmChunkSums sums{args};
  cpu::parallel_for(threads_, kernels::rmm_error_sums_size(args), [&](i64 i) { sums(i); });
  const kernels::RmmErrorDots dots{args};
  cpu::parallel_for(threads_, args.n * (kernels::kRmmErrorTerms + 2), [&](i64 i) { dots(i); });
}

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
