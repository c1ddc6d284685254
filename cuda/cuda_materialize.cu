// A task's factors rebuilt on the GPU (Backend::materialize), a block taking one or more
// 32 × 32 tiles of the parts' outputs in turn. Each element is
// kernels::materialize_element_typed's value, divided and rounded as the CPU's tiles do it, so
// the same bits (the file is compiled like cuda_rmm.cu: no contraction, IEEE division); only
// which thread computes which element is the GPU's own.
//
// An element per thread over the whole call (kernels::MaterializeElements) took 5.9 ms for a
// 7b task on an H200 against a 0.49 ms floor (bench/RESULTS.md): every thread searched ~450
// parts, divided 64-bit indices, and an RMM A (rank × in, its positions the columns) read the
// stored basis a whole position apart lane to lane. Here a block finds its part once, keeps it
// in shared memory, and lays its lanes along the stored rows — along a position's components
// for RMM sums, along the columns otherwise — then writes the tile through shared memory along
// the output's rows, so reads and writes both take whole lines.
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cuda_backend_impl.cuh"
#include "cuda_check.hpp"
#include "kernels/materialize.hpp"

namespace revmerge::cuda {
namespace {

using i64 = std::int64_t;
using kernels::ElemType;
using kernels::MaterializePart;

constexpr int kSide = static_cast<int>(kernels::kMaterializeTile);
constexpr int kWarps = 8, kThreads = kWarps * 32;
// Blocks an SM holds at once: 48 registers a thread, with no spills (ptxas -v, sm_90); the
// tile walk's loop state took an unbounded build to 64 registers and four blocks, six would
// spill.
constexpr int kBlocksPerSm = 5;
static_assert(kSide == 32, "a warp's lanes span one side of a tile");

// An RMM sum keeps a position's components (k) contiguous in the stored basis and mean; for an
// A (transposed) they run down the output's rows, so the lanes go down the tile's rows there.
__device__ bool lanes_down_rows(const MaterializePart& t) {
  return t.kind == kernels::PartKind::position_sum && t.transposed;
}

// A thread's elements of the tile (kSide / kWarps of them, a warp's row or column each), every
// load of them issued before the sums wait on any (the loop unrolled, nothing stored and no
// division between): the H200 needs tens of KB in flight per SM to read at its rate. Then the
// tile goes out along the output's rows through shared memory. Element(t, i, j) is the value
// before rounding.
template <ElemType O, class Element>
__device__ void tile_of(const MaterializePart& t, i64 i0, i64 j0, float (*values)[kSide + 1], Element element) {
  constexpr int kEach = kSide / kWarps;
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const bool down = lanes_down_rows(t);
  float v[kEach];
#pragma unroll
  for (int u = 0; u < kEach; ++u) {
    const int w = warp + u * kWarps, a = down ? lane : w, b = down ? w : lane;  // the tile's row, column
    const i64 i = i0 + a, j = j0 + b;
    v[u] = i < t.rows && j < t.cols ? element(t, i, j) : 0.0f;
  }
#pragma unroll
  for (int u = 0; u < kEach; ++u) v[u] /= t.divisor;  // apart: IEEE division may branch
#pragma unroll
  for (int u = 0; u < kEach; ++u) {
    const int w = warp + u * kWarps;
    (down ? values[lane][w] : values[w][lane]) = v[u];
  }
  __syncthreads();
#pragma unroll
  for (int u = 0; u < kEach; ++u) {
    const int a = warp + u * kWarps;
    const i64 i = i0 + a, j = j0 + lane;
    if (i < t.rows && j < t.cols) kernels::store_typed<O>(t.out, i * t.cols + j, values[a][lane]);
  }
}

template <ElemType S, int P>
struct SumOf {
  __device__ float operator()(const MaterializePart& t, i64 i, i64 j) const {
    return kernels::position_sum_element<S, P, true>(t, i, j);
  }
};

// The sources of a part all start on a multiple of their element size (typed loads are safe).
__device__ bool sources_aligned(const MaterializePart& t) {
  const auto size = static_cast<std::uintptr_t>(kernels::elem_size(kernels::source_type(t)));
  std::uintptr_t bits = 0;
  for (const void* src : t.src) bits |= reinterpret_cast<std::uintptr_t>(src);
  return (bits & (size - 1)) == 0;
}

template <ElemType S>
struct ElementOf {
  __device__ float operator()(const MaterializePart& t, i64 i, i64 j) const {
    return kernels::materialize_element_typed<S>(t, i, j);
  }
};

// The part tile `tile` lies in: the last part whose first tile is at most it (as
// kernels::materialize_part_of finds an element's part), searched by one warp 32 ways a
// round — two dependent loads for a 7b task's ~450 parts where a binary search takes nine,
// before any of the block's work can start. Invariant: the answer is in [lo, lo + span), so
// parts[lo] qualifies and the ballot is never empty.
__device__ i64 part_of_tile(const kernels::MaterializeArgs& args, i64 tile, int lane) {
  i64 lo = 0, span = args.count;
  while (span > 1) {
    const i64 step = (span + 31) / 32, k = lane * step;
    const bool at_or_before = k < span && args.parts[lo + k].first_tile <= tile;
    const unsigned ballot = __ballot_sync(0xffffffffu, at_or_before);
    const int last = 31 - __clz(static_cast<int>(ballot));
    lo += last * step;
    span = step < span - last * step ? step : span - last * step;
  }
  return lo;
}

// Tile (i0, j0) of part t: RMM sums at the common basis sizes, their sources aligned, have their
// own unrolled loops of typed loads; anything else goes through the element routine.
template <ElemType S, ElemType O>
__device__ void one_tile(const MaterializePart& t, i64 i0, i64 j0, float (*values)[kSide + 1]) {
  if (t.kind == kernels::PartKind::position_sum && sources_aligned(t)) {
    switch (t.p) {
      case 1: return tile_of<O>(t, i0, j0, values, SumOf<S, 1>{});
      case 2: return tile_of<O>(t, i0, j0, values, SumOf<S, 2>{});
      case 4: return tile_of<O>(t, i0, j0, values, SumOf<S, 4>{});
      default: break;
    }
  }
  tile_of<O>(t, i0, j0, values, ElementOf<S>{});
}

// One kernel per stored and output type (the call's, MaterializeArgs): only that code's
// registers count against the SM. A block takes `per_block` consecutive tiles in turn
// (kernels::materialize_tiles_per_block): the first one's part found by the warp search, a
// later one's by walking on from it (kernels::materialize_part_from) once the tiles pass the
// part's end, and the part copied into shared memory only when it changes — a block's start
// then counts once for all its tiles.
template <ElemType S, ElemType O>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    materialize_tiles(const __grid_constant__ kernels::MaterializeArgs args, const i64 per_block) {
  // The part, copied once: MaterializePart's initialisers rule out a __shared__ object of it.
  __shared__ alignas(alignof(MaterializePart)) unsigned char held[sizeof(MaterializePart)];
  __shared__ float values[kSide][kSide + 1];  // + 1: a column's elements in different banks
  __shared__ i64 found;
  const i64 begin = static_cast<i64>(blockIdx.x) * per_block;
  const i64 end = begin + per_block < args.tiles ? begin + per_block : args.tiles;
  if (threadIdx.x < 32) {
    const i64 part = part_of_tile(args, begin, static_cast<int>(threadIdx.x));
    if (threadIdx.x == 0) found = part;
  }
  __syncthreads();
  static_assert(sizeof(MaterializePart) % 4 == 0);
  const auto& t = *reinterpret_cast<const MaterializePart*>(held);
  // Every thread walks the same parts: the branches and their barriers are the block's as one.
  i64 part = found, copied = -1, part_end = 0;
  for (i64 tile = begin; tile < end; ++tile) {
    if (copied >= 0 && tile >= part_end) part = kernels::materialize_part_from(args, part, tile);
    if (part != copied) {
      const auto* from = reinterpret_cast<const std::uint32_t*>(args.parts + part);
      for (int w = static_cast<int>(threadIdx.x); w < static_cast<int>(sizeof(MaterializePart) / 4); w += kThreads)
        reinterpret_cast<std::uint32_t*>(held)[w] = from[w];
      __syncthreads();
      copied = part, part_end = t.first_tile + kernels::materialize_tiles(t);
    }
    const i64 across = (t.cols + kSide - 1) / kSide, local = tile - t.first_tile;
    one_tile<S, O>(t, local / across * kSide, local % across * kSide, values);
    __syncthreads();  // the tile's values read out, the part no longer read: both free again
  }
}

// Tiles a block takes in turn: REVMERGE_MATERIALIZE_TILES_PER_BLOCK where it is set (to measure
// one count against another: bench/materialize_bench.cpp --tiles-per-block), else
// kernels::materialize_tiles_per_block's choice for the blocks the device holds at once.
i64 tiles_per_block_asked() {
  const char* v = std::getenv("REVMERGE_MATERIALIZE_TILES_PER_BLOCK");
  if (v == nullptr || *v == '\0') return 0;
  char* rest = nullptr;
  const long long n = std::strtoll(v, &rest, 10);
  if (*rest != '\0' || n < 1 || n > 1024)
    throw std::invalid_argument(std::string("REVMERGE_MATERIALIZE_TILES_PER_BLOCK: '") + v +
                                "' is not a whole number from 1 to 1024");
  return n;
}

template <ElemType S, ElemType O>
void launch_tiles(const kernels::MaterializeArgs& args, int sm_count, cudaStream_t st) {
  // Asked once per kernel (a microsecond or more a call against a module's ~20 µs); every
  // device of a process is built for the same architecture.
  static const int per_sm = [] {
    int blocks = 0;
    REVMERGE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, materialize_tiles<S, O>, kThreads, 0));
    return blocks;
  }();
  const i64 asked = tiles_per_block_asked();
  const i64 per = asked > 0 ? asked : kernels::materialize_tiles_per_block(args.tiles, i64{per_sm} * sm_count);
  const i64 blocks = (args.tiles + per - 1) / per;
  materialize_tiles<S, O><<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(args, per);
}

template <ElemType S>
void launch_for(const kernels::MaterializeArgs& args, int sm_count, cudaStream_t st) {
  switch (args.out_type) {
    case ElemType::bf16: return launch_tiles<S, ElemType::bf16>(args, sm_count, st);
    case ElemType::f16: return launch_tiles<S, ElemType::f16>(args, sm_count, st);
    default: return launch_tiles<S, ElemType::f32>(args, sm_count, st);
  }
}

}  // namespace

void CudaBackend::materialize(const kernels::MaterializeArgs& args, Stream s) {
  use_device();
  if (args.tiles <= 0) return;
  // At most a block a tile; a 70b task is about a million tiles, far inside the grid's 2^31 − 1.
  if (args.tiles > 0x7fffffff) throw std::length_error("materialize: more tiles than a grid holds");
  const cudaStream_t st = stream(s);
  switch (args.source_type) {
    case ElemType::f32: launch_for<ElemType::f32>(args, sm_count(), st); break;
    case ElemType::bf16: launch_for<ElemType::bf16>(args, sm_count(), st); break;
    case ElemType::f16: launch_for<ElemType::f16>(args, sm_count(), st); break;
    default: launch_for<ElemType::f64>(args, sm_count(), st); break;
  }
  REVMERGE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace revmerge::cuda
