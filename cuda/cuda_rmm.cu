// The per-position routine on the GPU (host/kernels/rmm_position.hpp): a warp per position,
// several positions per block, each warp's scratch in shared memory; or, where one position's
// scratch does not leave room for several (many tasks, a large rank), a block of threads per
// position, its scratch in shared memory or, past the device's shared memory, in global memory.
// The file is compiled with --fmad=false and IEEE division and square root (cuda/CMakeLists.txt):
// the same operations as the CPU's, so the same bits.
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/system/cuda/execution_policy.h>

#include <algorithm>

#include "cuda_backend_impl.cuh"
#include "backend/gemm_shapes.hpp"
#include "cuda_check.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/rmm_candidates.hpp"
#include "kernels/rmm_errors.hpp"
#include "kernels/rmm_position.hpp"

namespace revmerge::cuda {
namespace {

using i64 = std::int64_t;

// A warp: lanes 0..31, synchronised and voting with the warp intrinsics.
struct WarpTeam {
  static constexpr bool serial = false;
  int lane_;
  __device__ int lane() const { return lane_; }
  __device__ int lanes() const { return 32; }
  __device__ void sync() const { __syncwarp(); }
  // A vote orders no memory (CUDA's warp vote functions): the __syncwarp first makes it the
  // barrier a team's any() is, as __syncthreads_or is for a block (racecheck found the gather's
  // writes read by other lanes after a bare __any_sync).
  __device__ bool any(bool pred) const {
    __syncwarp();
    return __any_sync(0xffffffffu, pred) != 0;
  }
};

// A block: every thread of it.
struct BlockTeam {
  static constexpr bool serial = false;
  __device__ int lane() const { return static_cast<int>(threadIdx.x); }
  __device__ int lanes() const { return static_cast<int>(blockDim.x); }
  __device__ void sync() const { __syncthreads(); }
  __device__ bool any(bool pred) const { return __syncthreads_or(pred) != 0; }
};

constexpr int kWarp = 32, kMaxWarpsPerBlock = 8, kBlockThreads = 128;
// Warps an SM should be able to hold: the routine is a chain of dependent steps (shared-memory
// round trips, IEEE f64 divisions and roots), hidden only by other warps. 32 leaves 64
// registers a thread.
constexpr int kWarpsPerSm = 32;

// kTasks: n fixed at compile time (0: read from args), as the CPU does for the common n: the
// loops over tasks unrolled, the Jacobi order and row lengths constants.
template <int kTasks>
__global__ void __launch_bounds__(kMaxWarpsPerBlock* kWarp, kWarpsPerSm / kMaxWarpsPerBlock)
    rmm_by_warps(const __grid_constant__ kernels::RmmModuleArgs args,
                             i64 scratch_doubles, i64 total) {
  extern __shared__ double shared[];
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const i64 g = static_cast<i64>(blockIdx.x) * (blockDim.x / kWarp) + warp;
  if (g >= total) return;  // the whole warp: the routine syncs within its warp only
  const int side = g < args.in ? 0 : 1;
  kernels::rmm_position<WarpTeam, kTasks>(WarpTeam{static_cast<int>(threadIdx.x) % kWarp}, args,
                                          side, side == 0 ? g : g - args.in,
                                          shared + warp * scratch_doubles);
}

// Positions blockIdx.x, blockIdx.x + gridDim.x, …: with global scratch the grid is only as
// large as the scratch allocated for it.
__global__ void rmm_by_blocks(const __grid_constant__ kernels::RmmModuleArgs args,
                              double* global_scratch, i64 scratch_doubles, i64 total) {
  extern __shared__ double shared[];
  double* scratch = global_scratch ? global_scratch + blockIdx.x * scratch_doubles : shared;
  for (i64 g = blockIdx.x; g < total; g += gridDim.x) {
    const int side = g < args.in ? 0 : 1;
    kernels::rmm_position(BlockTeam{}, args, side, side == 0 ? g : g - args.in, scratch);
    __syncthreads();  // the next position reuses the scratch
  }
}

template <class F>
void for_each_index(cudaStream_t st, i64 count, const F& f) {
  if (count <= 0) return;
  thrust::for_each_n(thrust::cuda::par_nosync.on(st), thrust::counting_iterator<i64>(0), count, f);
  REVMERGE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void CudaBackend::rmm_positions(const kernels::RmmModuleArgs& args, Stream s) {
  use_device();
  const cudaStream_t st = stream(s);
  const i64 total = args.in + args.out;
  const auto bytes =
      static_cast<std::size_t>(kernels::rmm_scratch_bytes(args.n, args.r, args.p, false));
  const i64 doubles = static_cast<i64>(bytes / 8);
  // Up to 32 tasks a warp per position (one Jacobi step's rotations fit its lanes) when at
  // least two positions' scratch fits a block's shared memory.
  const int most = static_cast<int>(
      std::min<std::size_t>(kMaxWarpsPerBlock, max_shared_bytes() / bytes));
  if (args.n <= 32 && most >= 2) {
    const auto kernel = args.n == 8 ? rmm_by_warps<8> : rmm_by_warps<0>;
    REVMERGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(most * bytes)));
    // Warps a block: the size that lets an SM hold the most positions at once (a block's
    // shared memory also carries what the driver reserves per block, so smaller blocks can
    // fit more), the larger on a tie.
    int warps = most, resident = 0;
    for (int w = most; w >= 2; w /= 2) {
      int fit = 0;
      REVMERGE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &fit, kernel, w * kWarp, static_cast<std::size_t>(w) * bytes));
      if (fit * w > resident) warps = w, resident = fit * w;
    }
    const std::size_t shared = static_cast<std::size_t>(warps) * bytes;
    const i64 blocks = (total + warps - 1) / warps;
    kernel<<<static_cast<unsigned>(blocks), warps * kWarp, shared, st>>>(args, doubles, total);
    REVMERGE_CUDA_CHECK(cudaGetLastError());
    return;
  }
  if (bytes <= max_shared_bytes()) {
    REVMERGE_CUDA_CHECK(cudaFuncSetAttribute(rmm_by_blocks, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(bytes)));
    rmm_by_blocks<<<static_cast<unsigned>(total), kBlockThreads, bytes, st>>>(args, nullptr, doubles, total);
    REVMERGE_CUDA_CHECK(cudaGetLastError());
    return;
  }
  // Scratch in global memory for a grid of a few blocks per SM, released as the launch is queued
  // (the pool's fence keeps it from another stream until the kernel has run).
  const i64 grid = std::min<i64>(total, 4 * static_cast<i64>(sm_count()));
  DeviceBuffer scratch = allocate(static_cast<std::size_t>(grid) * bytes);
  rmm_by_blocks<<<static_cast<unsigned>(grid), kBlockThreads, 0, st>>>(
      args, static_cast<double*>(scratch.data()), doubles, total);
  REVMERGE_CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::rmm_error_terms(const kernels::RmmErrorArgs& args, Stream s) {
  use_device();
  const cudaStream_t st = stream(s);
  for_each_index(st, kernels::rmm_error_sums_size(args), kernels::RmmChunkSums{args});
  for_each_index(st, kernels::rmm_error_row_dots_size(args), kernels::RmmErrorRowDots{args});
  for_each_index(st, args.n * (kernels::kRmmErrorTerms + 2), kernels::RmmErrorDots{args});
}

// The store's RMM candidates: per basis size, the rows [D_p | x] of every task and position in
// one launch, the Grams as one batched GEMM over runs of positions (split-K, so a few tasks
// still fill the GPU), the runs added in f64 in order. Each size reuses the rows' buffer.
void CudaBackend::rmm_candidate_grams(const kernels::RmmCandidateArgs& args, Stream s) {
  use_device();
  const cudaStream_t st = stream(s);
  const i64 n = args.n, r = args.r, m = args.m;
  if (args.count == 0 || n == 0) return;
  const i64 chunks = detail::whole_split_k(*this, n, r, 2 * r, m), run = m / chunks, per = 2 * r * r;
  DeviceBuffer rows = allocate(sizeof(float) * static_cast<std::size_t>(n * m * 2 * r));
  DeviceBuffer pieces = allocate(sizeof(float) * static_cast<std::size_t>(n * chunks * per));
  for (i64 i = 0; i < args.count; ++i) {
    for_each_index(st, n * m * r, kernels::RmmCandidateRows{args, i, rows.f32()});
    // Run c of task t is rows (t · m + c · run) … + run: one stride apart in the batch.
    const MatBatch d{rows.f32(), n * chunks, run, r, 2 * r, run * 2 * r};
    const MatBatch dx{rows.f32(), n * chunks, run, 2 * r, 2 * r, run * 2 * r};
    gemm(Op::transpose, Op::none, 1.0f, d, dx, 0.0f, MatBatch::packed(pieces.f32(), n * chunks, r, 2 * r), s);
    for_each_index(st, n * per, kernels::RmmCandidateChunkSums{args, i, chunks, pieces.f32()});
  }
}

// A step of an element-wise merge: an index per thread (an element, a tie chunk, a block's lane).
void CudaBackend::elementwise(const kernels::ElementwiseStep& step, Stream s) {
  use_device();
  if (step.kind == kernels::ElementwiseKind::della_keep && della_keep_by_sort(step, stream(s))) return;
  for_each_index(stream(s), kernels::step_indices(step), kernels::ElementwiseIndices{step});
}

}  // namespace revmerge::cuda
