// The CUDA backend: construction, memory, copies, ordering, and deferred solver checks.
#include <algorithm>

#include "cuda_backend.hpp"
#include "cuda_backend_impl.cuh"
#include "cuda_check.hpp"

namespace revmerge {
namespace cuda {

namespace {

// Raw allocators for the pools; ctx points at the device index.
void* device_alloc(void* ctx, std::size_t bytes) {
  if (cudaSetDevice(*static_cast<int*>(ctx)) != cudaSuccess) return nullptr;
  void* p = nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free allocation error
    return nullptr;
  }
  return p;
}
void device_free(void* ctx, void* p) {
  cudaSetDevice(*static_cast<int*>(ctx));
  cudaFree(p);
}
void* pinned_alloc(void*, std::size_t bytes) {
  void* p = nullptr;
  if (cudaHostAlloc(&p, bytes, cudaHostAllocPortable) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return p;
}
void pinned_free(void*, void* p) { cudaFreeHost(p); }

}  // namespace

CudaBackend::CudaBackend(int device)
    : device_(device),
      pool_("cuda:" + std::to_string(device), &device_alloc, &device_free, &device_),
      staging_("pinned host memory", &pinned_alloc, &pinned_free, nullptr) {
  int count = 0;
  REVMERGE_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count)
    throw device_error("CUDA device " + std::to_string(device) + " does not exist (" +
                       std::to_string(count) + " visible)");
  REVMERGE_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp prop{};
  REVMERGE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  name_ = "cuda:" + std::to_string(device) + " " + prop.name;
  REVMERGE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  REVMERGE_CUBLAS_CHECK(cublasCreate(&cublas_));
  // Pedantic math: full f32, never TF32, whatever the environment says.
  REVMERGE_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_PEDANTIC_MATH));
  REVMERGE_CUSOLVER_CHECK(cusolverDnCreate(&cusolver_));
  REVMERGE_CUSOLVER_CHECK(cusolverDnCreateSyevjInfo(&syevj_params_));
  REVMERGE_CUSOLVER_CHECK(cusolverDnXsyevjSetSortEig(syevj_params_, 1));  // ascending
  REVMERGE_CUSOLVER_CHECK(cusolverDnXsyevjSetMaxSweeps(syevj_params_, 100));
  REVMERGE_CUSOLVER_CHECK(cusolverDnCreateParams(&solver_params_));
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto& [st, h] : f64_handles_) {
    cudaStreamSynchronize(st);
    if (h.solver) cusolverDnDestroy(h.solver);
    if (h.blas) cublasDestroy(h.blas);
  }
  if (solver_params_) cusolverDnDestroyParams(solver_params_);
  if (syevj_params_) cusolverDnDestroySyevjInfo(syevj_params_);
  if (cusolver_) cusolverDnDestroy(cusolver_);
  if (cublas_) cublasDestroy(cublas_);
  for (auto st : extra_streams_) {
    cudaStreamSynchronize(st);
    cudaStreamDestroy(st);
  }
  if (stream_) cudaStreamDestroy(stream_);
}

std::size_t CudaBackend::memory_available() const {
  REVMERGE_CUDA_CHECK(cudaSetDevice(device_));
  std::size_t free = 0, total = 0;
  REVMERGE_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return free + pool_.use().cached;
}

Stream CudaBackend::create_stream() {
  REVMERGE_CUDA_CHECK(cudaSetDevice(device_));
  cudaStream_t st = nullptr;
  REVMERGE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  extra_streams_.push_back(st);
  return Stream{st};
}

void CudaBackend::upload(void* dst, const void* src, std::size_t bytes, Stream s) {
  REVMERGE_CUDA_CHECK(cudaSetDevice(device_));  // the calling thread may be a pipeline stage
  if (bytes)
    REVMERGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream(s)));
}

void CudaBackend::download(void* dst, const void* src, std::size_t bytes, Stream s) {
  REVMERGE_CUDA_CHECK(cudaSetDevice(device_));
  if (bytes)
    REVMERGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream(s)));
}

void CudaBackend::synchronize(Stream s) {
  REVMERGE_CUDA_CHECK(cudaStreamSynchronize(stream(s)));
  check_pending_infos(stream(s));
}

void CudaBackend::defer_info_check(DeviceBuffer info, std::vector<DeviceBuffer> in_flight,
                                   std::int64_t count, cudaStream_t st, std::string call) {
  PendingInfo p{std::move(info), std::move(in_flight),
                staging_.allocate(static_cast<std::size_t>(count) * sizeof(int)), count, st,
                std::move(call)};
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(p.host_info.data(), p.device_info.data(),
                                      static_cast<std::size_t>(count) * sizeof(int),
                                      cudaMemcpyDeviceToHost, st));
  std::lock_guard lock(pending_mutex_);
  pending_.push_back(std::move(p));
}

void CudaBackend::keep_until_synchronized(std::vector<DeviceBuffer> blocks, cudaStream_t st) {
  PendingInfo p{DeviceBuffer{}, std::move(blocks), DeviceBuffer{}, 0, st, {}};
  std::lock_guard lock(pending_mutex_);
  pending_.push_back(std::move(p));
}

void CudaBackend::check_pending_infos(cudaStream_t st) {
  std::lock_guard lock(pending_mutex_);
  std::string failure;
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->stream != st) {
      ++it;
      continue;
    }
    const auto* info = static_cast<const int*>(it->host_info.data());
    for (std::int64_t i = 0; i < it->count && failure.empty(); ++i)
      if (info[i] != 0)
        failure = it->call + ": matrix " + std::to_string(i) + " of " + std::to_string(it->count) +
                  " reports info " + std::to_string(info[i]) +
                  (info[i] > 0 ? " (did not converge)" : " (invalid argument)");
    it = pending_.erase(it);
  }
  if (!failure.empty()) throw solver_error(failure);
}

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
  return std::make_unique<cuda::CudaBackend>(options.device);
}

}  // namespace revmerge
