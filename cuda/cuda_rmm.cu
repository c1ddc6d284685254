// The per-position routine on the GPU (host/kernels/rmm_position.hpp): a team of 32, 16 or 8
// lanes of a warp per position (one to four positions a warp), several positions per block,
// each team's scratch in shared memory; or, where one position's scratch does not leave room
// for several (many tasks, a large rank), a block of threads per position, its scratch in
// shared memory or, past the device's shared memory, in global memory.
// The file is compiled with --fmad=false and IEEE division and square root (cuda/CMakeLists.txt):
// the same operations as the CPU's, so the same bits.
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/system/cuda/execution_policy.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>

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

// kLanes consecutive lanes of a warp (8, 16 or 32; `mask` has the team's bits), synchronised
// and voting with the warp intrinsics over the team's lanes alone: the warp's other teams run
// other positions, which may take more or fewer Jacobi sweeps.
template <int kLanes>
struct LanesTeam {
  static constexpr bool serial = false;
  int lane_;
  unsigned mask_;
  __device__ int lane() const { return lane_; }
  __device__ int lanes() const { return kLanes; }
  __device__ void sync() const { __syncwarp(mask_); }
  // A vote orders no memory (CUDA's warp vote functions): the __syncwarp first makes it the
  // barrier a team's any() is, as __syncthreads_or is for a block (racecheck found the gather's
  // writes read by other lanes after a bare __any_sync).
  __device__ bool any(bool pred) const {
    __syncwarp(mask_);
    return __any_sync(mask_, pred) != 0;
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
// loops over tasks unrolled, the Jacobi order and row lengths constants. kLanes: the lanes a
// position's team has (32 / kLanes positions a warp). Teams with fewer lanes issue fewer
// instructions a position (the routine's one-lane steps — the rotations' roots and divisions,
// the sweeps' sums — run for several positions at once); at 32, more of each step runs at once.
template <int kTasks, int kLanes>
__global__ void __launch_bounds__(kMaxWarpsPerBlock* kWarp, kWarpsPerSm / kMaxWarpsPerBlock)
    rmm_by_teams(const __grid_constant__ kernels::RmmModuleArgs args, i64 scratch_doubles, i64 total) {
  extern __shared__ double shared[];
  const int team = static_cast<int>(threadIdx.x) / kLanes, lane = static_cast<int>(threadIdx.x) % kLanes;
  const i64 g = static_cast<i64>(blockIdx.x) * (blockDim.x / kLanes) + team;
  if (g >= total) return;  // the whole team: the routine syncs within its team only
  const unsigned mask =
      kLanes == kWarp ? 0xffffffffu : ((1u << kLanes) - 1u) << (static_cast<int>(threadIdx.x) % kWarp / kLanes * kLanes);
  const int side = g < args.in ? 0 : 1;
  kernels::rmm_position<LanesTeam<kLanes>, kTasks>(LanesTeam<kLanes>{lane, mask}, args, side,
                                                   side == 0 ? g : g - args.in,
                                                   shared + team * scratch_doubles);
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

// Lanes a position's team has: REVMERGE_RMM_TEAM_LANES where it is set (8, 16 or 32: to
// measure one against another, tools/gpu-check.sh's rmm-team-lanes), else a warp.
int team_lanes_asked() {
  const char* v = std::getenv("REVMERGE_RMM_TEAM_LANES");
  if (v == nullptr || *v == '\0') return kWarp;
  const std::string s(v);
  if (s == "8" || s == "16" || s == "32") return std::stoi(s);
  throw std::invalid_argument("REVMERGE_RMM_TEAM_LANES: '" + s + "' is not 8, 16 or 32");
}

template <int kTasks>
void (*teams_kernel(int lanes))(kernels::RmmModuleArgs, i64, i64) {
  switch (lanes) {
    case 8: return rmm_by_teams<kTasks, 8>;
    case 16: return rmm_by_teams<kTasks, 16>;
    default: return rmm_by_teams<kTasks, kWarp>;
  }
}

}  // namespace

void CudaBackend::rmm_positions(const kernels::RmmModuleArgs& args, Stream s) {
  use_device();
  const cudaStream_t st = stream(s);
  const i64 total = args.in + args.out;
  const auto bytes =
      static_cast<std::size_t>(kernels::rmm_scratch_bytes(args.n, args.r, args.p, false));
  const i64 doubles = static_cast<i64>(bytes / 8);
  // Teams of a warp or less (up to 32 tasks: one Jacobi step's rotations fit a warp's lanes)
  // when a block's shared memory holds the scratch of at least two warps' positions. A team of
  // fewer lanes than a warp keeps its scratch at a stride of 8 mod 16 doubles, so that the
  // two teams of a half-warp reading the same entries of their scratch meet different banks.
  const int lanes = team_lanes_asked(), teams = kWarp / lanes;
  const i64 stride = lanes == kWarp ? doubles : (doubles + 7) / 16 * 16 + 8;
  const std::size_t warp_bytes = static_cast<std::size_t>(teams * stride) * 8;
  const int most = static_cast<int>(std::min<std::size_t>(kMaxWarpsPerBlock, max_shared_bytes() / warp_bytes));
  if (args.n <= 32 && most >= 2) {
    const auto kernel = args.n == 8 ? teams_kernel<8>(lanes) : teams_kernel<0>(lanes);
    REVMERGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(most * warp_bytes)));
    // Warps a block: the size that lets an SM hold the most positions at once (a block's
    // shared memory also carries what the driver reserves per block, so smaller blocks can
    // fit more), the larger on a tie.
    int warps = most, resident = 0;
    for (int w = most; w >= 2; w /= 2) {
      int fit = 0;
      REVMERGE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, w * kWarp, w * warp_bytes));
      if (fit * w > resident) warps = w, resident = fit * w;
    }
    const i64 per_block = static_cast<i64>(warps) * teams;
    const i64 blocks = (total + per_block - 1) / per_block;
    kernel<<<static_cast<unsigned>(blocks), warps * kWarp, warps * warp_bytes, st>>>(args, stride, total);
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
