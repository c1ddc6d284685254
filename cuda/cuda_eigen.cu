// Batched symmetric eigensolver: cuSOLVER syevjBatched (Jacobi) for n ≤ 32, the 64-bit batched
// syev above that. The matrices are symmetric, so row- or column-major input is the same; the
// column-major eigenvectors are exactly the interface's row-major rows.
#include "cuda_backend_impl.cuh"
#include "cuda_check.hpp"

namespace revmerge::cuda {

void CudaBackend::symmetric_eigen(const MatBatch& a, float* eigenvalues, Stream s) {
  const auto n = a.rows;
  if (a.cols != n || a.ld != n || a.stride != n * n)
    throw shape_error("symmetric_eigen: expects packed square matrices, got " +
                      std::to_string(a.rows) + "×" + std::to_string(a.cols) + " ld " +
                      std::to_string(a.ld));
  if (a.batch == 0) return;
  const cudaStream_t st = stream(s);
  REVMERGE_CUSOLVER_CHECK(cusolverDnSetStream(cusolver_, st));
  DeviceBuffer info = allocate(static_cast<std::size_t>(a.batch) * sizeof(int));
  const std::string sizes = " (n " + std::to_string(n) + ", batch " + std::to_string(a.batch) + ")";
  if (n <= 32) {
    int lwork = 0;
    REVMERGE_CUSOLVER_CHECK(cusolverDnSsyevjBatched_bufferSize(
        cusolver_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, static_cast<int>(n), a.data,
        static_cast<int>(n), eigenvalues, &lwork, syevj_params_, static_cast<int>(a.batch)));
    DeviceBuffer work = allocate(static_cast<std::size_t>(lwork) * sizeof(float));
    REVMERGE_CUSOLVER_CHECK(cusolverDnSsyevjBatched(
        cusolver_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, static_cast<int>(n), a.data,
        static_cast<int>(n), eigenvalues, work.f32(), lwork, static_cast<int*>(info.data()),
        syevj_params_, static_cast<int>(a.batch)));
    defer_info_check(std::move(info), std::move(work), a.batch, st,
                     "cusolverDnSsyevjBatched" + sizes);
    return;
  }
  std::size_t device_bytes = 0, host_bytes = 0;
  REVMERGE_CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(
      cusolver_, solver_params_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, n, CUDA_R_32F,
      a.data, n, CUDA_R_32F, eigenvalues, CUDA_R_32F, &device_bytes, &host_bytes, a.batch));
  DeviceBuffer work = allocate(device_bytes);
  std::vector<char> host_work(host_bytes);
  REVMERGE_CUSOLVER_CHECK(cusolverDnXsyevBatched(
      cusolver_, solver_params_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, n, CUDA_R_32F,
      a.data, n, CUDA_R_32F, eigenvalues, CUDA_R_32F, work.data(), device_bytes,
      host_bytes ? host_work.data() : nullptr, host_bytes, static_cast<int*>(info.data()), a.batch));
  // A host workspace (none on current cuSOLVER) must outlive the call's use of it.
  if (host_bytes) REVMERGE_CUDA_CHECK(cudaStreamSynchronize(st));
  defer_info_check(std::move(info), std::move(work), a.batch, st,
                   "cusolverDnXsyevBatched" + sizes);
}

}  // namespace revmerge::cuda
