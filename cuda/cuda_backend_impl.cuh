#pragma once
// The CUDA backend's class, shared by its .cu files (one operation group per file).
//
// Resources as RAFT keeps them: the device id, a default stream, library handles made per
// stream on first use (a handle's stream is its state, so two threads working on two streams
// never share one), a caching pool of device memory and one of pinned host memory. Every entry
// point makes the backend's device current first (the caller may be any pipeline thread).
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstddef>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "backend/caching_pool.hpp"

namespace revmerge::cuda {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;

  BackendKind kind() const noexcept override { return BackendKind::cuda; }
  std::string name() const override { return name_; }

  DeviceBuffer allocate(std::size_t bytes) override { return pool_.allocate(bytes); }
  DeviceBuffer allocate_staging(std::size_t bytes) override { return staging_.allocate(bytes); }
  bool shares_host_memory() const noexcept override { return false; }
  MemoryUse memory_use() const override { return pool_.use(); }
  std::size_t memory_available() const override;
  void limit_cache(std::size_t bytes) override { pool_.set_limit(bytes); }
  Stream create_stream() override;
  void upload(void* dst, const void* host_src, std::size_t bytes, Stream s) override;
  void download(void* host_dst, const void* src, std::size_t bytes, Stream s) override;
  void synchronize(Stream s) override;

  Event record_event(Stream s) override;
  void wait_event(Stream s, const Event& e) override;
  void synchronize_event(const Event& e) override;
  bool query_event(const Event& e) override;
  void copy(void* dst, const void* src, std::size_t bytes, Stream s) override;
  void fill(void* dst, unsigned char value, std::size_t bytes, Stream s) override;

  void gemm(Op op_a, Op op_b, float alpha, const MatBatch& a, const MatBatch& b, float beta,
            const MatBatch& c, Stream s) override;
  std::int64_t split_k_hint(std::int64_t batch, std::int64_t rows, std::int64_t cols,
                            std::int64_t inner) const override;

  // cuda_rmm.cu
  void rmm_positions(const kernels::RmmModuleArgs& args, Stream s) override;
  void rmm_error_terms(const kernels::RmmErrorArgs& args, Stream s) override;
  void rmm_candidate_grams(const kernels::RmmCandidateArgs& args, Stream s) override;
  void materialize(const kernels::MaterializeArgs& args, Stream s) override;
  void elementwise(const kernels::ElementwiseStep& step, Stream s) override;
  // cuda_della.cu: DELLA's ranks by sorting rows (false: left to the routine's count).
  bool della_keep_by_sort(const kernels::ElementwiseStep& step, cudaStream_t st);

  // cuda_dense_f64.cu
  void gemm_f64(Op op_a, std::int64_t rows, std::int64_t cols, std::int64_t inner,
                const double* a, std::int64_t lda, std::int64_t stride_a, const double* b,
                std::int64_t ldb, std::int64_t stride_b, double* c, std::int64_t ldc,
                std::int64_t stride_c, std::int64_t batch, Stream s) override;
  void cholesky_inverse_f64(double* g, double* inverse, std::int64_t n, std::int64_t batch,
                            int* info, Stream s) override;
  void householder_qr_f64(double* x, std::int64_t rows, std::int64_t cols, double* r_host,
                          Stream s) override;
  std::size_t householder_qr_f64_work_bytes(std::int64_t rows, std::int64_t cols) override;
  void sum_squares_f64(const double* x, std::int64_t count, std::int64_t batch, double* out,
                       Stream s) override;
  void delta_f64(const void* ft, DType ft_type, const void* base, DType base_type, double* delta,
                 std::int64_t count, std::uint64_t* first_bad, Stream s) override;
  void gaussian_f64(double* out, std::int64_t count, std::uint64_t seed, std::uint64_t stream_id,
                    Stream s) override;
  void cholesky_qr_verdict_f64(const double* r2, const int* infos, std::int64_t n, std::int64_t batch,
                               double tolerance, int* held, Stream s) override;
  void lora_stacks_f64(const double* u, const double* v, const double* s, std::int64_t tasks,
                       std::int64_t in, std::int64_t out, std::int64_t k, std::int64_t r,
                       float* a, float* b, Stream st) override;
  void gram_f64(const float* x, std::int64_t rows, std::int64_t cols, double* g, Stream s) override;
  void symmetric_eigen_f64(double* a, std::int64_t n, double* w, int* info, Stream s) override;
  void gemm_f64_rows(Op op_a, Op op_b, std::int64_t rows, std::int64_t cols, std::int64_t inner, double alpha,
                     const double* a, std::int64_t lda, const double* b, std::int64_t ldb, double* c,
                     std::int64_t ldc, Stream s) override;

  int device() const noexcept { return device_; }
  /// The stream a call runs on: the caller's, or the backend's own for Stream{}.
  cudaStream_t stream(Stream s) const noexcept {
    return s.handle ? static_cast<cudaStream_t>(s.handle) : stream_;
  }
  /// Makes the backend's device the calling thread's current one.
  void use_device() const;
  int sm_count() const noexcept { return sm_count_; }
  /// Dynamic shared memory one block may use (the device's opt-in maximum).
  std::size_t max_shared_bytes() const noexcept { return max_shared_bytes_; }

  /// The library handles of one stream: cuBLAS for f32 (pedantic: never TF32) and for f64
  /// (default math: the FP64 tensor cores are IEEE double), cuSOLVER where `with_solver` (made
  /// on a stream's first call that asks: RMM and the classic merges never do, and a cuSOLVER
  /// handle costs its own start).
  struct Handles {
    cublasHandle_t blas32 = nullptr;
    cublasHandle_t blas64 = nullptr;
    cusolverDnHandle_t solver = nullptr;
  };
  Handles handles(cudaStream_t st, bool with_solver = false);

 private:
  // The pools' fences (caching_pool.hpp): an event on each of the backend's streams, so a block
  // is handed out again only after everything queued on any of them before its release has run.
  struct Fence {
    std::vector<cudaEvent_t> events;
  };
  static PoolFences fences(CudaBackend* self);
  static void* device_alloc(void* self, std::size_t bytes);
  static void device_free(void* self, void* p);
  Fence* record_fence() noexcept;
  bool fence_done(Fence* f);
  void wait_fence(Fence* f);
  void drop_fence(Fence* f) noexcept;
  void recycle_event(cudaEvent_t e) noexcept;

  int device_;
  int sm_count_ = 1;
  std::size_t max_shared_bytes_ = 48 << 10;  // dynamic shared memory one block may opt in to
  std::string name_;
  // Raw device allocations are stream-ordered too (cudaMallocAsync / cudaFreeAsync on a stream
  // of their own, where the device has memory pools): freeing the cache never runs cudaFree,
  // which would wait for the whole device, on a pipeline thread.
  bool async_alloc_ = false;
  cudaStream_t alloc_stream_ = nullptr;
  std::vector<cudaEvent_t> spare_events_;  // recycled fence events
  std::mutex events_mutex_;
  std::vector<cudaStream_t> extra_streams_;
  std::mutex streams_mutex_;
  cudaStream_t stream_ = nullptr;
  std::map<cudaStream_t, Handles> handles_;
  std::mutex handles_mutex_;
  CachingPool pool_;     // device memory; declared last, so torn down first
  CachingPool staging_;  // pinned host memory (cudaHostAlloc)
};

}  // namespace revmerge::cuda
