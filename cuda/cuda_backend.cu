// The CUDA backend: construction, memory, copies, ordering, and deferred solver checks.
#include <algorithm>

#include "cuda_backend.hpp"
#include "cuda_backend_impl.cuh"
#include "cuda_check.hpp"

namespace revmerge {
namespace cuda {

DevicePool::~DevicePool() {
  cudaSetDevice(device_);
  for (auto& [ptr, size] : sizes_) cudaFree(ptr);  // no throw from a destructor
}

DeviceBuffer DevicePool::allocate(std::size_t bytes) {
  // Size classes: 256-byte multiples up to 1 MiB, then 1 MiB multiples, so a layer's repeated
  // requests for the same shapes are served from the cache.
  const std::size_t unit = bytes <= (1u << 20) ? 256 : (1u << 20);
  const std::size_t cls = std::max<std::size_t>(unit, (bytes + unit - 1) / unit * unit);
  std::lock_guard lock(mutex_);
  void* ptr = nullptr;
  if (auto it = free_.find(cls); it != free_.end()) {
    ptr = it->second;
    free_.erase(it);
  } else {
    REVMERGE_CUDA_CHECK(cudaSetDevice(device_));
    cudaError_t st = cudaMalloc(&ptr, cls);
    if (st == cudaErrorMemoryAllocation && !free_.empty()) {  // give cached blocks back, retry
      cudaGetLastError();
      for (auto& [c, p] : free_) {
        cudaFree(p);
        sizes_.erase(p);
      }
      free_.clear();
      st = cudaMalloc(&ptr, cls);
    }
    if (st != cudaSuccess)
      throw device_error("cudaMalloc of " + std::to_string(cls) + " bytes failed: " +
                         cudaGetErrorString(st) + " (" + std::to_string(in_use_) +
                         " bytes in use by revmerge)");
    sizes_[ptr] = cls;
  }
  in_use_ += cls;
  peak_ = std::max(peak_, in_use_);
  return DeviceBuffer(ptr, bytes, &DevicePool::release, this);
}

void DevicePool::release(void* ctx, void* ptr) {
  auto* pool = static_cast<DevicePool*>(ctx);
  std::lock_guard lock(pool->mutex_);
  const auto cls = pool->sizes_.at(ptr);
  pool->in_use_ -= cls;
  pool->free_.emplace(cls, ptr);
}

CudaBackend::CudaBackend(int device) : device_(device), pool_(device) {
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
  for (auto& p : pending_) cudaFreeHost(p.host_info);
  if (solver_params_) cusolverDnDestroyParams(solver_params_);
  if (syevj_params_) cusolverDnDestroySyevjInfo(syevj_params_);
  if (cusolver_) cusolverDnDestroy(cusolver_);
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaBackend::upload(void* dst, const void* src, std::size_t bytes, Stream s) {
  if (bytes)
    REVMERGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream(s)));
}

void CudaBackend::download(void* dst, const void* src, std::size_t bytes, Stream s) {
  if (bytes)
    REVMERGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream(s)));
}

void CudaBackend::synchronize(Stream s) {
  REVMERGE_CUDA_CHECK(cudaStreamSynchronize(stream(s)));
  check_pending_infos(stream(s));
}

void CudaBackend::defer_info_check(DeviceBuffer info, std::int64_t count, cudaStream_t st,
                                   std::string call) {
  PendingInfo p{std::move(info), nullptr, count, st, std::move(call)};
  REVMERGE_CUDA_CHECK(cudaMallocHost(&p.host_info, static_cast<std::size_t>(count) * sizeof(int)));
  const cudaError_t copy = cudaMemcpyAsync(p.host_info, p.device_info.data(),
                                           static_cast<std::size_t>(count) * sizeof(int),
                                           cudaMemcpyDeviceToHost, st);
  if (copy != cudaSuccess) {
    cudaFreeHost(p.host_info);
    REVMERGE_CUDA_CHECK(copy);
  }
  pending_.push_back(std::move(p));
}

void CudaBackend::check_pending_infos(cudaStream_t st) {
  std::string failure;
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->stream != st) {
      ++it;
      continue;
    }
    for (std::int64_t i = 0; i < it->count && failure.empty(); ++i)
      if (it->host_info[i] != 0)
        failure = it->call + ": matrix " + std::to_string(i) + " of " + std::to_string(it->count) +
                  " reports info " + std::to_string(it->host_info[i]) +
                  (it->host_info[i] > 0 ? " (did not converge)" : " (invalid argument)");
    cudaFreeHost(it->host_info);
    it = pending_.erase(it);
  }
  if (!failure.empty()) throw solver_error(failure);
}

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
  return std::make_unique<cuda::CudaBackend>(options.device);
}

}  // namespace revmerge
