#pragma once
// The CPU backend: OpenBLAS (OpenMP build) for GEMM, LAPACKE for the f64 group's
// factorisations, the per-position routines (host/kernels/) one position per thread at a time,
// the shared functors under Thrust's OpenMP system for element-wise work. Batches are split
// across threads; each matrix or position is computed by one thread, so results do not depend
// on the thread count.
#include "backend/backend.hpp"
#include "backend/caching_pool.hpp"

namespace revmerge {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads);

  BackendKind kind() const noexcept override { return BackendKind::cpu; }
  std::string name() const override;
  int threads() const noexcept { return threads_; }

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

  Event record_event(Stream) override { return {}; }  // work has run when the call returns
  void wait_event(Stream, const Event&) override {}
  void synchronize_event(const Event&) override {}
  bool query_event(const Event&) override { return true; }
  void copy(void* dst, const void* src, std::size_t bytes, Stream s) override;
  void fill(void* dst, unsigned char value, std::size_t bytes, Stream s) override;

  void gemm(Op op_a, Op op_b, float alpha, const MatBatch& a, const MatBatch& b, float beta,
            const MatBatch& c, Stream s) override;
  std::int64_t split_k_hint(std::int64_t, std::int64_t, std::int64_t, std::int64_t) const override {
    return 1;
  }

  // cpu_rmm.cpp
  void rmm_positions(const kernels::RmmModuleArgs& args, Stream s) override;
  void rmm_error_terms(const kernels::RmmErrorArgs& args, Stream s) override;
  // cpu_rmm_candidates.cpp
  void rmm_candidate_grams(const kernels::RmmCandidateArgs& args, Stream s) override;
  void materialize(const kernels::MaterializeArgs& args, Stream s) override;
  void elementwise(const kernels::ElementwiseStep& step, Stream s) override;

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
  void cholesky_qr_verdict_f64(const double* r2, const int* infos, std::int64_t n, std::int64_t batch,
                               double tolerance, int* held, Stream s) override;
  void lora_stacks_f64(const double* u, const double* v, const double* s, std::int64_t tasks,
                       std::int64_t in, std::int64_t out, std::int64_t k, std::int64_t r, float* a,
                       float* b, Stream st) override;
  void gram_f64(const float* x, std::int64_t rows, std::int64_t cols, double* g, Stream s) override;
  void symmetric_eigen_f64(double* a, std::int64_t n, double* w, int* info, Stream s) override;
  void gemm_f64_rows(Op op_a, Op op_b, std::int64_t rows, std::int64_t cols, std::int64_t inner, double alpha,
                     const double* a, std::int64_t lda, const double* b, std::int64_t ldb, double* c,
                     std::int64_t ldc, Stream s) override;

 private:
  int threads_;
  CachingPool pool_;
};

}  // namespace revmerge
