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
  sm_count_ = prop.multiProcessorCount;
  max_shared_bytes_ = prop.sharedMemPerBlockOptin;
  REVMERGE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto& [st, h] : handles_) {
    cudaStreamSynchronize(st);
    if (h.solver) cusolverDnDestroy(h.solver);
    if (h.blas32) cublasDestroy(h.blas32);
    if (h.blas64) cublasDestroy(h.blas64);
  }
  for (auto st : extra_streams_) {
    cudaStreamSynchronize(st);
    cudaStreamDestroy(st);
  }
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaBackend::use_device() const { REVMERGE_CUDA_CHECK(cudaSetDevice(device_)); }

CudaBackend::Handles CudaBackend::handles(cudaStream_t st) {
  std::lock_guard lock(handles_mutex_);
  auto [it, fresh] = handles_.try_emplace(st);
  if (fresh) {
    Handles& h = it->second;
    // Made one by one, so a failure leaves what was made to the destructor.
    REVMERGE_CUBLAS_CHECK(cublasCreate(&h.blas32));
    REVMERGE_CUBLAS_CHECK(cublasSetMathMode(h.blas32, CUBLAS_PEDANTIC_MATH));  // never TF32
    REVMERGE_CUBLAS_CHECK(cublasSetStream(h.blas32, st));
    REVMERGE_CUBLAS_CHECK(cublasCreate(&h.blas64));
    REVMERGE_CUBLAS_CHECK(cublasSetMathMode(h.blas64, CUBLAS_DEFAULT_MATH));
    REVMERGE_CUBLAS_CHECK(cublasSetStream(h.blas64, st));
    REVMERGE_CUSOLVER_CHECK(cusolverDnCreate(&h.solver));
    REVMERGE_CUSOLVER_CHECK(cusolverDnSetStream(h.solver, st));
  }
  return it->second;
}

std::size_t CudaBackend::memory_available() const {
  use_device();
  std::size_t free = 0, total = 0;
  REVMERGE_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return free + pool_.use().cached;
}

Stream CudaBackend::create_stream() {
  use_device();
  cudaStream_t st = nullptr;
  REVMERGE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  std::lock_guard lock(streams_mutex_);
  extra_streams_.push_back(st);
  return Stream{st};
}

void CudaBackend::upload(void* dst, const void* src, std::size_t bytes, Stream s) {
  use_device();
  if (bytes)
    REVMERGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream(s)));
}

void CudaBackend::download(void* dst, const void* src, std::size_t bytes, Stream s) {
  use_device();
  if (bytes)
    REVMERGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream(s)));
}

void CudaBackend::copy(void* dst, const void* src, std::size_t bytes, Stream s) {
  use_device();
  if (bytes)
    REVMERGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream(s)));
}

void CudaBackend::fill(void* dst, unsigned char value, std::size_t bytes, Stream s) {
  use_device();
  if (bytes) REVMERGE_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, stream(s)));
}

void CudaBackend::synchronize(Stream s) {
  use_device();
  REVMERGE_CUDA_CHECK(cudaStreamSynchronize(stream(s)));
  check_pending_infos(stream(s));
}

Event CudaBackend::record_event(Stream s) {
  use_device();
  cudaEvent_t e = nullptr;
  REVMERGE_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  Event owned(e, [](void*, void* h) { cudaEventDestroy(static_cast<cudaEvent_t>(h)); }, nullptr);
  REVMERGE_CUDA_CHECK(cudaEventRecord(e, stream(s)));
  return owned;
}

void CudaBackend::wait_event(Stream s, const Event& e) {
  use_device();
  REVMERGE_CUDA_CHECK(cudaStreamWaitEvent(stream(s), static_cast<cudaEvent_t>(e.handle()), 0));
}

void CudaBackend::synchronize_event(const Event& e) {
  use_device();
  REVMERGE_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(e.handle())));
  check_pending_infos(nullptr, /*completed_only=*/true);  // what has run by now: checked, freed
}

bool CudaBackend::query_event(const Event& e) {
  use_device();
  const cudaError_t st = cudaEventQuery(static_cast<cudaEvent_t>(e.handle()));
  if (st == cudaErrorNotReady) return false;
  REVMERGE_CUDA_CHECK(st);
  return true;
}

std::int64_t CudaBackend::split_k_hint(std::int64_t batch, std::int64_t rows, std::int64_t cols,
                                       std::int64_t inner) const {
  // Enough pieces for two waves of cuBLAS's 128 × 128 tiles over every SM, none shorter than
  // 256 along the sum (shorter pieces would spend more on their sums than they save).
  const std::int64_t tiles = batch * ((rows + 127) / 128) * ((cols + 127) / 128);
  const std::int64_t want = (2 * sm_count_ + tiles - 1) / std::max<std::int64_t>(tiles, 1);
  return std::clamp<std::int64_t>(want, 1, std::max<std::int64_t>(inner / 256, 1));
}

void CudaBackend::defer_info_check(DeviceBuffer info, std::vector<DeviceBuffer> in_flight,
                                   std::int64_t count, cudaStream_t st, std::string call) {
  PendingInfo p{std::move(info), std::move(in_flight),
                staging_.allocate(static_cast<std::size_t>(count) * sizeof(int)), count, st,
                std::move(call), {}};
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(p.host_info.data(), p.device_info.data(),
                                      static_cast<std::size_t>(count) * sizeof(int),
                                      cudaMemcpyDeviceToHost, st));
  p.done = record_event(Stream{st});
  std::lock_guard lock(pending_mutex_);
  pending_.push_back(std::move(p));
}

void CudaBackend::keep_until_synchronized(std::vector<DeviceBuffer> blocks, cudaStream_t st) {
  PendingInfo p{DeviceBuffer{}, std::move(blocks), DeviceBuffer{}, 0, st, {}, {}};
  p.done = record_event(Stream{st});
  std::lock_guard lock(pending_mutex_);
  pending_.push_back(std::move(p));
}

void CudaBackend::check_pending_infos(cudaStream_t st, bool completed_only) {
  std::lock_guard lock(pending_mutex_);
  std::string failure;
  for (auto it = pending_.begin(); it != pending_.end();) {
    const bool due = completed_only
                         ? cudaEventQuery(static_cast<cudaEvent_t>(it->done.handle())) == cudaSuccess
                         : it->stream == st;
    if (!due) {
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
  cudaGetLastError();  // a query of a pending event is not an error to keep
  if (!failure.empty()) throw solver_error(failure);
}

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
  return std::make_unique<cuda::CudaBackend>(options.device);
}

}  // namespace revmerge
