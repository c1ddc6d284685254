// The element-wise work on the GPU: the same functors the CPU backend runs with Thrust's OpenMP
// system (host/kernels/rmm_kernels.hpp), here under thrust::cuda on the backend's stream.
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/system/cuda/execution_policy.h>

#include "cuda_backend_impl.cuh"
#include "cuda_check.hpp"
#include "kernels/rmm_kernels.hpp"

namespace revmerge::cuda {
namespace {

template <class F>
void run(cudaStream_t st, std::int64_t count, const F& f) {
  if (count <= 0) return;
  thrust::for_each_n(thrust::cuda::par_nosync.on(st), thrust::counting_iterator<std::int64_t>(0),
                     count, f);
  REVMERGE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void CudaBackend::permute3(const float* src, std::int64_t s0, std::int64_t s1, std::int64_t s2,
                           float* dst, std::int64_t d0, std::int64_t d1, std::int64_t d2, Stream s) {
  run(stream(s), d0 * d1 * d2, kernels::Permute3{src, s0, s1, s2, d1, d2, dst});
}

void CudaBackend::center_rows(float* x, float* mean, std::int64_t rows, std::int64_t n, Stream s) {
  run(stream(s), rows, kernels::CenterRows{x, mean, n});
}

void CudaBackend::broadcast_rows(const float* value, float* out, std::int64_t rows, std::int64_t n,
                                 Stream s) {
  run(stream(s), rows * n, kernels::BroadcastRows{value, out, n});
}

void CudaBackend::select_top(const float* eigvecs, float* wp, std::int64_t batch, std::int64_t n,
                             std::int64_t p, Stream s) {
  run(stream(s), batch * p, kernels::SelectTop{eigvecs, wp, n, p});
}

void CudaBackend::normalize_basis(float* v, const float* wp, float* c, const float* eigenvalues,
                                  std::int64_t batch, std::int64_t r, std::int64_t n,
                                  std::int64_t p, float rel_tol, Stream s) {
  run(stream(s), batch * p, kernels::NormalizeBasis{v, wp, c, eigenvalues, r, n, p, rel_tol});
}

void CudaBackend::mask_nonfinite(float* gram, float* mark, std::int64_t batch, std::int64_t n,
                                 Stream s) {
  run(stream(s), batch, kernels::MaskNonfinite{gram, mark, n});
}

void CudaBackend::poison_marked(const float* mark, float* mean, float* basis, float* coef,
                                std::int64_t batch, std::int64_t r, std::int64_t p, std::int64_t n,
                                Stream s) {
  run(stream(s), batch, kernels::PoisonMarked{mark, mean, basis, coef, r, p, n});
}

void CudaBackend::subtract(const float* x, const float* y, float* out, std::int64_t count, Stream s) {
  run(stream(s), count, kernels::Subtract{x, y, out});
}

void CudaBackend::batched_dot(const float* x, const float* y, double* out, std::int64_t batch,
                              std::int64_t count, Stream s) {
  run(stream(s), batch, kernels::BatchedDot{x, y, out, count});
}

void CudaBackend::column_sums(const float* x, double* out, std::int64_t batch, std::int64_t n,
                              Stream s) {
  run(stream(s), n, kernels::ColumnSums{x, out, batch, n});
}

void CudaBackend::round_to(float* x, std::int64_t count, DType dtype, Stream s) {
  switch (dtype) {
    case DType::F32:
      return;
    case DType::BF16:
      return run(stream(s), count, kernels::RoundToBf16{x});
    case DType::F16:
      return run(stream(s), count, kernels::RoundToF16{x});
    default:
      throw unsupported_error("round_to: results are stored as F32, F16 or BF16, not " +
                              std::string(dtype_name(dtype)));
  }
}

}  // namespace revmerge::cuda
