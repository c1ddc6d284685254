#pragma once
// The CUDA backend's class, shared by its .cu files (one operation group per file).
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

  void gemm(Op op_a, Op op_b, float alpha, const MatBatch& a, const MatBatch& b, float beta,
            const MatBatch& c, Stream s) override;
  void symmetric_eigen(const MatBatch& a, float* eigenvalues, Stream s) override;
  std::size_t symmetric_eigen_work_bytes(std::int64_t batch, std::int64_t n) override;

  void permute3(const float* src, std::int64_t s0, std::int64_t s1, std::int64_t s2, float* dst,
                std::int64_t d0, std::int64_t d1, std::int64_t d2, Stream s) override;
  void center_rows(float* x, float* mean, std::int64_t rows, std::int64_t n, Stream s) override;
  void broadcast_rows(const float* value, float* out, std::int64_t rows, std::int64_t n,
                      Stream s) override;
  void select_top(const float* eigvecs, float* wp, std::int64_t batch, std::int64_t n,
                  std::int64_t p, Stream s) override;
  void normalize_basis(float* v, const float* wp, float* c, const float* eigenvalues,
                       std::int64_t batch, std::int64_t r, std::int64_t n, std::int64_t p,
                       float rel_tol, Stream s) override;
  void mask_nonfinite(float* gram, float* mark, std::int64_t batch, std::int64_t n,
                      Stream s) override;
  void poison_marked(const float* mark, float* mean, float* basis, float* coef, std::int64_t batch,
                     std::int64_t r, std::int64_t p, std::int64_t n, Stream s) override;
  void subtract(const float* x, const float* y, float* out, std::int64_t count, Stream s) override;
  void batched_dot(const float* x, const float* y, double* out, std::int64_t batch,
                   std::int64_t count, Stream s) override;
  void column_sums(const float* x, double* out, std::int64_t batch, std::int64_t n,
                   Stream s) override;
  void round_to(float* x, std::int64_t count, DType dtype, Stream s) override;

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
  void lora_stacks_f64(const double* u, const double* v, const double* s, std::int64_t tasks,
                       std::int64_t in, std::int64_t out, std::int64_t k, std::int64_t r,
                       float* a, float* b, Stream st) override;

  int device() const noexcept { return device_; }
  /// The stream a call runs on: the caller's, or the backend's own for Stream{}.
  cudaStream_t stream(Stream s) const noexcept {
    return s.handle ? static_cast<cudaStream_t>(s.handle) : stream_;
  }

 private:
  // Solver status words are copied back asynchronously and checked at synchronize(), so a
  // layer's work never waits on the host in the middle. The solver's workspaces are held here
  // too: returned to the pool at once, another stream (the pipeline's copy stream) could be
  // handed a block while the solver still writes to it.
  struct PendingInfo {
    DeviceBuffer device_info;             // one int per matrix
    std::vector<DeviceBuffer> in_flight;  // released after the stream has finished
    DeviceBuffer host_info;               // pinned copy, from the staging pool (a cudaMallocHost
                                          // per solver call cost more than the solve)
    std::int64_t count = 0;
    cudaStream_t stream = nullptr;
    std::string call;
  };
  /// Queues the copy of a solver's info array; synchronize() checks it.
  void defer_info_check(DeviceBuffer info, std::vector<DeviceBuffer> in_flight,
                        std::int64_t count, cudaStream_t st, std::string call);
  void check_pending_infos(cudaStream_t st);
  /// Holds blocks a queued call still uses (the solvers' pointer arrays) until synchronize().
  void keep_until_synchronized(std::vector<DeviceBuffer> blocks, cudaStream_t st);

  // The f64 group's library handles, one pair per stream and made on first use: a handle's
  // stream is its state, so calls on two streams from two threads (the pipeline's reader
  // compressing while the compute stage merges) must not share one.
  struct Handles {
    cublasHandle_t blas = nullptr;
    cusolverDnHandle_t solver = nullptr;
  };
  Handles f64_handles(cudaStream_t st);
  std::map<cudaStream_t, Handles> f64_handles_;
  std::mutex f64_handles_mutex_;

  int device_;
  std::string name_;
  CachingPool pool_;     // device memory (cudaMalloc)
  CachingPool staging_;  // pinned host memory (cudaHostAlloc)
  std::vector<cudaStream_t> extra_streams_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cusolverDnHandle_t cusolver_ = nullptr;
  syevjInfo_t syevj_params_ = nullptr;
  cusolverDnParams_t solver_params_ = nullptr;
  std::vector<PendingInfo> pending_;
  std::mutex pending_mutex_;  // the pipeline's copy thread synchronizes its own stream
};

}  // namespace revmerge::cuda
