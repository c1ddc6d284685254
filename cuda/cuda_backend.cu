// The CUDA backend: construction, memory, copies, ordering, and deferred solver checks.
#include <algorithm>

#include "cuda_backend.hpp"
#include "cuda_backend_impl.cuh"
#include "cuda_check.hpp"

namespace revmerge {
namespace cuda {

namespace {

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

void* CudaBackend::device_alloc(void* ctx, std::size_t bytes) {
  auto* self = static_cast<CudaBackend*>(ctx);
  if (cudaSetDevice(self->device_) != cudaSuccess) return nullptr;
  void* p = nullptr;
  // The allocation is complete before any stream is handed it: its own stream is synchronized
  // (it carries nothing but allocations and frees of blocks no work touches any more).
  const cudaError_t st = self->async_alloc_ ? cudaMallocAsync(&p, bytes, self->alloc_stream_)
                                            : cudaMalloc(&p, bytes);
  if (st != cudaSuccess || (self->async_alloc_ && cudaStreamSynchronize(self->alloc_stream_) != cudaSuccess)) {
    cudaGetLastError();  // clear the sticky-free allocation error
    return nullptr;
  }
  return p;
}

void CudaBackend::device_free(void* ctx, void* p) {
  auto* self = static_cast<CudaBackend*>(ctx);
  cudaSetDevice(self->device_);
  if (!self->async_alloc_) {
    cudaFree(p);
    return;
  }
  // The pool frees only blocks whose fences completed: nothing queued touches `p`. Synchronizing
  // the allocation stream hands the memory back to the device at once (release threshold 0),
  // so cudaMemGetInfo and other libraries see it.
  cudaFreeAsync(p, self->alloc_stream_);
  cudaStreamSynchronize(self->alloc_stream_);
}

PoolFences CudaBackend::fences(CudaBackend* self) {
  PoolFences f;
  f.ctx = self;
  f.record = [](void* c) -> void* { return static_cast<CudaBackend*>(c)->record_fence(); };
  f.done = [](void* c, void* fence) {
    return static_cast<CudaBackend*>(c)->fence_done(static_cast<Fence*>(fence));
  };
  f.wait = [](void* c, void* fence) {
    static_cast<CudaBackend*>(c)->wait_fence(static_cast<Fence*>(fence));
  };
  f.drop = [](void* c, void* fence) {
    static_cast<CudaBackend*>(c)->drop_fence(static_cast<Fence*>(fence));
  };
  return f;
}

CudaBackend::CudaBackend(int device)
    : device_(device),
      pool_("cuda:" + std::to_string(device), &CudaBackend::device_alloc, &CudaBackend::device_free, this,
            fences(this)),
      staging_("pinned host memory", &pinned_alloc, &pinned_free, nullptr, fences(this)) {
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
  try {  // no destructor runs for a constructor that throws: what was made goes here
    int pools = 0;
    REVMERGE_CUDA_CHECK(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device));
    if (pools != 0) {
      REVMERGE_CUDA_CHECK(cudaStreamCreateWithFlags(&alloc_stream_, cudaStreamNonBlocking));
      async_alloc_ = true;
    }
  } catch (...) {
    cudaStreamDestroy(stream_);
    throw;
  }
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  // Cached blocks go while the streams their fences and frees use still exist.
  try {
    pool_.release_cached();
    staging_.release_cached();
  } catch (...) {  // a failed device: its memory goes with the context
  }
  if (alloc_stream_) {
    cudaStreamSynchronize(alloc_stream_);
    cudaStreamDestroy(alloc_stream_);
    alloc_stream_ = nullptr;  // what is still in use is freed on the legacy stream
  }
  for (auto e : spare_events_) cudaEventDestroy(e);
  spare_events_.clear();
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

CudaBackend::Handles CudaBackend::handles(cudaStream_t st, bool with_solver) {
  std::lock_guard lock(handles_mutex_);
  Handles& h = handles_[st];
  // Each handle is kept only once it is set up, so a failure leaves nothing half made and the
  // next call makes what is missing.
  const auto blas = [&](cublasMath_t mode) {
    cublasHandle_t b = nullptr;
    REVMERGE_CUBLAS_CHECK(cublasCreate(&b));
    try {
      REVMERGE_CUBLAS_CHECK(cublasSetMathMode(b, mode));
      REVMERGE_CUBLAS_CHECK(cublasSetStream(b, st));
    } catch (...) {
      cublasDestroy(b);
      throw;
    }
    return b;
  };
  if (h.blas32 == nullptr) h.blas32 = blas(CUBLAS_PEDANTIC_MATH);  // never TF32
  if (h.blas64 == nullptr) h.blas64 = blas(CUBLAS_DEFAULT_MATH);
  if (with_solver && h.solver == nullptr) {
    cusolverDnHandle_t solver = nullptr;
    REVMERGE_CUSOLVER_CHECK(cusolverDnCreate(&solver));
    try {
      REVMERGE_CUSOLVER_CHECK(cusolverDnSetStream(solver, st));
    } catch (...) {
      cusolverDnDestroy(solver);
      throw;
    }
    h.solver = solver;
  }
  return h;
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

CudaBackend::Fence* CudaBackend::record_fence() noexcept {
  std::vector<cudaStream_t> streams{stream_};
  {
    std::lock_guard lock(streams_mutex_);
    streams.insert(streams.end(), extra_streams_.begin(), extra_streams_.end());
  }
  auto* fence = new (std::nothrow) Fence;
  if (fence == nullptr) return nullptr;
  cudaSetDevice(device_);
  for (cudaStream_t st : streams) {
    cudaEvent_t e = nullptr;
    {
      std::lock_guard lock(events_mutex_);
      if (!spare_events_.empty()) {
        e = spare_events_.back();
        spare_events_.pop_back();
      }
    }
    if (e == nullptr && cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess) e = nullptr;
    // A device that cannot record an event has failed; the next checked call reports it.
    if (e == nullptr || cudaEventRecord(e, st) != cudaSuccess) {
      if (e) cudaEventDestroy(e);
      cudaGetLastError();
      continue;
    }
    fence->events.push_back(e);
  }
  return fence;
}

bool CudaBackend::fence_done(Fence* f) {
  use_device();
  while (!f->events.empty()) {
    const cudaError_t st = cudaEventQuery(f->events.back());
    if (st == cudaErrorNotReady) {
      cudaGetLastError();  // a pending query is not an error to keep
      return false;
    }
    REVMERGE_CUDA_CHECK(st);
    recycle_event(f->events.back());
    f->events.pop_back();
  }
  return true;
}

void CudaBackend::wait_fence(Fence* f) {
  use_device();
  for (cudaEvent_t e : f->events) REVMERGE_CUDA_CHECK(cudaEventSynchronize(e));
}

void CudaBackend::drop_fence(Fence* f) noexcept {
  for (cudaEvent_t e : f->events) recycle_event(e);
  delete f;
}

void CudaBackend::recycle_event(cudaEvent_t e) noexcept {
  std::lock_guard lock(events_mutex_);
  spare_events_.push_back(e);
}

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
  return std::make_unique<cuda::CudaBackend>(options.device);
}

}  // namespace revmerge
