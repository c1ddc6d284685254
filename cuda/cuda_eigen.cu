// Batched symmetric eigensolver on cuSOLVER, solved in double precision: syevjBatched (Jacobi)
// for n ≤ 32, the 64-bit batched syev above that. In f32, syevj's eigenvectors of the RMM Grams
// lost orthonormality at the 1e-5 level (up to 6e-4 for the 40 × 40 syev with a large null
// space) where the CPU's f32 Jacobi and LAPACK held 1e-6; the matrices are n × n with n the task
// count, so the f64 solve costs the GPU next to nothing. The matrices are symmetric, so row- or
// column-major input is the same; the column-major eigenvectors are the interface's rows.
#include <thrust/transform.h>
#include <thrust/system/cuda/execution_policy.h>

#include "cuda_backend_impl.cuh"
#include "cuda_check.hpp"

namespace revmerge::cuda {
namespace {

template <class To>
struct Convert {
  template <class From>
  __host__ __device__ To operator()(From x) const { return static_cast<To>(x); }
};

template <class From, class To>
void convert(cudaStream_t st, const From* src, To* dst, std::int64_t count) {
  thrust::transform(thrust::cuda::par_nosync.on(st), src, src + count, dst, Convert<To>{});
  REVMERGE_CUDA_CHECK(cudaGetLastError());
}

// The f64 copies symmetric_eigen solves on, one block: the matrices, then 256-byte aligned the
// eigenvalues (the layout the memory plan counts too).
std::size_t values_offset(std::int64_t batch, std::int64_t n) {
  return (static_cast<std::size_t>(batch * n * n) * sizeof(double) + 255) / 256 * 256;
}
std::size_t f64_copy_bytes(std::int64_t batch, std::int64_t n) {
  return values_offset(batch, n) + static_cast<std::size_t>(batch * n) * sizeof(double);
}

}  // namespace

std::size_t CudaBackend::symmetric_eigen_work_bytes(std::int64_t batch, std::int64_t n) {
  if (batch == 0) return 0;
  const std::int64_t mats = batch * n * n;
  std::size_t solver = 0;
  // The solver's workspace, asked of cuSOLVER (no data is read to size it); should it refuse,
  // twice the matrices is a generous stand-in.
  if (n <= 32) {
    int lwork = 0;
    if (cusolverDnDsyevjBatched_bufferSize(cusolver_, CUSOLVER_EIG_MODE_VECTOR,
                                           CUBLAS_FILL_MODE_UPPER, static_cast<int>(n), nullptr,
                                           static_cast<int>(n), nullptr, &lwork, syevj_params_,
                                           static_cast<int>(batch)) == CUSOLVER_STATUS_SUCCESS)
      solver = static_cast<std::size_t>(lwork) * sizeof(double);
    else
      solver = 2 * static_cast<std::size_t>(mats) * sizeof(double);
  } else {
    std::size_t host_bytes = 0;
    if (cusolverDnXsyevBatched_bufferSize(cusolver_, solver_params_, CUSOLVER_EIG_MODE_VECTOR,
                                          CUBLAS_FILL_MODE_UPPER, n, CUDA_R_64F, nullptr, n,
                                          CUDA_R_64F, nullptr, CUDA_R_64F, &solver, &host_bytes,
                                          batch) != CUSOLVER_STATUS_SUCCESS)
      solver = 2 * static_cast<std::size_t>(mats) * sizeof(double);
  }
  return pool_size_class(f64_copy_bytes(batch, n)) +
         pool_size_class(static_cast<std::size_t>(batch) * sizeof(int)) +
         (solver ? pool_size_class(solver) : 0);
}

void CudaBackend::symmetric_eigen(const MatBatch& a, float* eigenvalues, Stream s) {
  const auto n = a.rows;
  if (a.cols != n || a.ld != n || a.stride != n * n)
    throw shape_error("symmetric_eigen: expects packed square matrices, got " +
                      std::to_string(a.rows) + "×" + std::to_string(a.cols) + " ld " +
                      std::to_string(a.ld));
  if (a.batch == 0) return;
  const cudaStream_t st = stream(s);
  REVMERGE_CUSOLVER_CHECK(cusolverDnSetStream(cusolver_, st));
  const std::int64_t mat_count = a.batch * n * n, val_count = a.batch * n;
  DeviceBuffer f64 = allocate(f64_copy_bytes(a.batch, n));
  auto* mats = static_cast<double*>(f64.data());
  auto* vals = reinterpret_cast<double*>(static_cast<char*>(f64.data()) + values_offset(a.batch, n));
  convert(st, a.data, mats, mat_count);
  DeviceBuffer info = allocate(static_cast<std::size_t>(a.batch) * sizeof(int));
  const std::string sizes = " (n " + std::to_string(n) + ", batch " + std::to_string(a.batch) + ")";
  DeviceBuffer work;
  std::string call;
  if (n <= 32) {
    int lwork = 0;
    REVMERGE_CUSOLVER_CHECK(cusolverDnDsyevjBatched_bufferSize(
        cusolver_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, static_cast<int>(n), mats,
        static_cast<int>(n), vals, &lwork, syevj_params_, static_cast<int>(a.batch)));
    work = allocate(static_cast<std::size_t>(lwork) * sizeof(double));
    REVMERGE_CUSOLVER_CHECK(cusolverDnDsyevjBatched(
        cusolver_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, static_cast<int>(n), mats,
        static_cast<int>(n), vals, static_cast<double*>(work.data()), lwork,
        static_cast<int*>(info.data()), syevj_params_, static_cast<int>(a.batch)));
    call = "cusolverDnDsyevjBatched" + sizes;
  } else {
    std::size_t device_bytes = 0, host_bytes = 0;
    REVMERGE_CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(
        cusolver_, solver_params_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, n,
        CUDA_R_64F, mats, n, CUDA_R_64F, vals, CUDA_R_64F, &device_bytes, &host_bytes, a.batch));
    work = allocate(device_bytes);
    std::vector<char> host_work(host_bytes);
    REVMERGE_CUSOLVER_CHECK(cusolverDnXsyevBatched(
        cusolver_, solver_params_, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, n,
        CUDA_R_64F, mats, n, CUDA_R_64F, vals, CUDA_R_64F, work.data(), device_bytes,
        host_bytes ? host_work.data() : nullptr, host_bytes, static_cast<int*>(info.data()),
        a.batch));
    // A host workspace (none on current cuSOLVER) must outlive the call's use of it.
    if (host_bytes) REVMERGE_CUDA_CHECK(cudaStreamSynchronize(st));
    call = "cusolverDnXsyevBatched" + sizes;
  }
  convert(st, mats, a.data, mat_count);
  convert(st, vals, eigenvalues, val_count);
  std::vector<DeviceBuffer> in_flight;
  in_flight.push_back(std::move(f64));
  in_flight.push_back(std::move(work));
  defer_info_check(std::move(info), std::move(in_flight), a.batch, st, call);
}

}  // namespace revmerge::cuda
