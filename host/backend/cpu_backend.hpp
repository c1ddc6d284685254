#pragma once
// The CPU backend: OpenBLAS (OpenMP build) for GEMM, LAPACKE for the eigensolver, the shared
// functors under Thrust's OpenMP system for element-wise work. Batches are split across
// threads; each matrix is computed by one thread, so results do not depend on the thread count.
#include <functional>

#include "backend/backend.hpp"
#include "backend/caching_pool.hpp"

namespace revmerge {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads);

  BackendKind kind() const noexcept override { return BackendKind::cpu; }
  std::string name() const override;
  int threads() const noexcept { return threads_; }
  /// Runs body(b) for every block b on the backend's threads, one block per thread at a time.
  /// Inside the body every op of this backend runs on the calling thread: a block's work stays
  /// in that core's cache instead of passing through memory between ops. The first exception is
  /// rethrown.
  void parallel_blocks(std::int64_t blocks, const std::function<void(std::int64_t)>& body);

  DeviceBuffer allocate(std::size_t bytes) override { return pool_.allocate(bytes); }
  DeviceBuffer allocate_staging(std::size_t bytes) override { return pool_.allocate(bytes); }
  bool shares_host_memory() const noexcept override { return true; }
  MemoryUse memory_use() const override { return pool_.use(); }
  std::size_t memory_available() const override;
  void limit_cache(std::size_t bytes) override { pool_.set_limit(bytes); }
  Stream create_stream() override { return {}; }
  void upload(void* dst, const void* host_src, std::size_t bytes, Stream s) override;
  void download(void* host_dst, const void* src, std::size_t bytes, Stream s) override;
  void synchronize(Stream) override {}

  void gemm(Op op_a, Op op_b, float alpha, const MatBatch& a, const MatBatch& b, float beta,
            const MatBatch& c, Stream s) override;
  void symmetric_eigen(const MatBatch& a, float* eigenvalues, Stream s) override;
  std::size_t symmetric_eigen_work_bytes(std::int64_t, std::int64_t) override { return 0; }

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
  void subtract(const float* x, const float* y, float* out, std::int64_t count,
                Stream s) override;
  void batched_dot(const float* x, const float* y, double* out, std::int64_t batch,
                   std::int64_t count, Stream s) override;
  void column_sums(const float* x, double* out, std::int64_t batch, std::int64_t n,
                   Stream s) override;
  void round_to(float* x, std::int64_t count, DType dtype, Stream s) override;

  // cpu_dense_f64.cpp
  void gemm_f64(Op op_a, std::int64_t rows, std::int64_t cols, std::int64_t inner,
                const double* a, std::int64_t lda, std::int64_t stride_a, const double* b,
                std::int64_t ldb, std::int64_t stride_b, double* c, std::int64_t ldc,
                std::int64_t stride_c, std::int64_t batch, Stream s) override;
  void cholesky_inverse_f64(double* g, double* inverse, std::int64_t n, std::int64_t batch,
                            int* info, Stream s) override;
  void householder_qr_f64(double* x, std::int64_t rows, std::int64_t cols, double* r_host,
                          Stream s) override;
  std::size_t householder_qr_f64_work_bytes(std::int64_t, std::int64_t) override { return 0; }
  void sum_squares_f64(const double* x, std::int64_t count, std::int64_t batch, double* out,
                       Stream s) override;
  void delta_f64(const void* ft, DType ft_type, const void* base, DType base_type, double* delta,
                 std::int64_t count, std::uint64_t* first_bad, Stream s) override;
  void gaussian_f64(double* out, std::int64_t count, std::uint64_t seed, std::uint64_t stream_id,
                    Stream s) override;
  void lora_stacks_f64(const double* u, const double* v, const double* s, std::int64_t tasks,
                       std::int64_t in, std::int64_t out, std::int64_t k, std::int64_t r, float* a,
                       float* b, Stream st) override;

 private:
  int threads_;
  CachingPool pool_;
};

}  // namespace revmerge
