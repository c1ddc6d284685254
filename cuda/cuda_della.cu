// DELLA's ranks on the GPU by sorting each row rather than counting it. The routine
// (kernels::della_keep_element) finds an element's place in its row by reading the whole row:
// on an H200 a 7b layer's DELLA took 5.4 s against the CPU's 1.7 s (bench/RESULTS.md). Here
// each row is sorted once — its magnitudes' bits descending, stably, so equal magnitudes keep
// their order — and an element's place is its position in that order: the same count (those of
// larger magnitude, and those of equal magnitude before it), so the same probability, draw and
// bits as the routine's (CombineOnGpuTest, RowsOnGpuTest).
#include <cub/device/device_segmented_sort.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include <climits>

#include "cuda_backend_impl.cuh"
#include "cuda_check.hpp"
#include "kernels/elementwise.hpp"

namespace revmerge::cuda {
namespace {

using i64 = std::int64_t;

constexpr int kThreads = 256;

unsigned blocks_for(i64 count) { return static_cast<unsigned>((count + kThreads - 1) / kThreads); }

// Row q starts at q · row in the piece (rows are contiguous where inner is 1).
struct RowStart {
  i64 row;
  __host__ __device__ i64 operator()(i64 q) const { return q * row; }
};

// Each element's magnitude bits (the key the routine compares) and its place in its row.
__global__ void della_keys(const __grid_constant__ kernels::ElementwiseStep s, std::uint32_t* keys,
                           std::int32_t* at) {
  const i64 j = static_cast<i64>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= s.count) return;
  keys[j] = kernels::magnitude_bits(s.x[j]);
  at[j] = static_cast<std::int32_t>(j % s.row);
}

// Position `pos` of the sorted rows: the element there has `pos mod row` elements before it.
__global__ void della_decide(const __grid_constant__ kernels::ElementwiseStep s, const std::int32_t* at_sorted) {
  const i64 pos = static_cast<i64>(blockIdx.x) * kThreads + threadIdx.x;
  if (pos >= s.count) return;
  const i64 place = pos % s.row;
  const i64 j = pos - place + at_sorted[pos];
  const float p = kernels::della_probability(s.row - place, s.row, s.density, s.epsilon);
  s.keep[j] = kernels::CounterThreshold(s.seed, s.stream)
                  .below(static_cast<std::uint64_t>(s.first + j), kernels::CounterThreshold::limit(p));
}

}  // namespace

bool CudaBackend::della_keep_by_sort(const kernels::ElementwiseStep& s, cudaStream_t st) {
  // Rows `inner` apart, or a piece not of whole rows, or more places than the sort's values
  // hold: the routine's count.
  if (s.inner != 1 || s.row < 2 || s.count % s.row != 0 || s.row > INT_MAX) return false;
  const i64 rows = s.count / s.row;
  const auto n = static_cast<std::size_t>(s.count);
  // Released as the launches are queued: the pool's fence keeps them from other work until
  // everything queued before their release has run.
  DeviceBuffer keys = allocate(n * 4), keys_sorted = allocate(n * 4), at = allocate(n * 4), at_sorted = allocate(n * 4);
  auto* k_in = static_cast<std::uint32_t*>(keys.data());
  auto* k_out = static_cast<std::uint32_t*>(keys_sorted.data());
  auto* a_in = static_cast<std::int32_t*>(at.data());
  auto* a_out = static_cast<std::int32_t*>(at_sorted.data());
  const auto starts = thrust::make_transform_iterator(thrust::counting_iterator<i64>(0), RowStart{s.row});
  std::size_t work_bytes = 0;
  REVMERGE_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairsDescending(
      nullptr, work_bytes, k_in, k_out, a_in, a_out, s.count, rows, starts, starts + 1, st));
  DeviceBuffer work = allocate(std::max<std::size_t>(work_bytes, 1));
  della_keys<<<blocks_for(s.count), kThreads, 0, st>>>(s, k_in, a_in);
  REVMERGE_CUDA_CHECK(cudaGetLastError());
  REVMERGE_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairsDescending(
      work.data(), work_bytes, k_in, k_out, a_in, a_out, s.count, rows, starts, starts + 1, st));
  della_decide<<<blocks_for(s.count), kThreads, 0, st>>>(s, a_out);
  REVMERGE_CUDA_CHECK(cudaGetLastError());
  return true;
}

}  // namespace revmerge::cuda
