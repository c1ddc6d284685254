#pragma once
// PT-SVD of every task's delta of one module in one batch, written against the backend's f64
// group: Δ_t = W_t − W_base formed in backend memory from the files' bytes, then the randomized
// SVD of all of them with one shared sketch — randomized_svd's algorithm (Gaussian sketch with
// oversampling, power iterations re-orthonormalised after every multiply, an exact SVD of the
// small projection), in f64 throughout, re-orthonormalising by CholeskyQR2 (batched GEMMs and
// l × l Cholesky factors) with Householder QR for a matrix it cannot hold to orthonormality (a
// factorization fails, as for a zero Δ, or the second pass shows the first far from
// orthonormal, as a rank-deficient sketch may).
//
// It is how a GPU compresses (`compress --device cuda`, the streamed full-model merge on a
// GPU). On the CPU backend it runs too — the tests check it there on every machine — but
// pt_svd (f32 power iterations on all BLAS threads) is the faster CPU path.
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "backend/backend.hpp"
#include "methods/lowrank/randomized_svd.hpp"
#include "revmerge/dtype.hpp"

namespace revmerge {

/// A weight as its file holds it: `data` points at in · out values of `dtype` (row-major
/// out × in), F64, F32, F16 or BF16.
struct RawWeight {
  const std::byte* data = nullptr;
  DType dtype = DType::F32;
};

struct DeltaSvd {
  TruncatedSvd svd;                ///< of Δᵀ (column-major in × out), as pt_svd returns it
  double norm_sq = 0;              ///< ‖Δ‖_F²
  std::int64_t nonfinite_at = -1;  ///< the first element of Δ that is NaN or ±Inf (svd empty)
};

class BatchedPtSvd {
 public:
  /// Runs on its own stream of `backend` (so it may run on one thread while the backend
  /// computes on another). `backend` must outlive it.
  explicit BatchedPtSvd(Backend& backend);
  ~BatchedPtSvd();
  BatchedPtSvd(const BatchedPtSvd&) = delete;
  BatchedPtSvd& operator=(const BatchedPtSvd&) = delete;

  /// For each fine-tune t, Δ_t = fine_tunes[t] − base and its randomized SVD with `options`
  /// (rank, oversampling, power iterations, the sketch's seed and stream). Tasks go in batches
  /// as large as limit_memory allows, one at least. When a Δ_t holds a non-finite value its
  /// `nonfinite_at` is set and no SVD of its batch is computed. Throws device_error /
  /// solver_error.
  std::vector<DeltaSvd> run(const RawWeight& base, std::span<const RawWeight> fine_tunes,
                            std::int64_t in, std::int64_t out, const RandomizedSvdOptions& options);
  /// Where run_into_stacks writes the factors: RMM stacks in backend memory, A tasks × r × in
  /// and B tasks × out × r (f32, row-major), task t's at t · r · in and t · out · r.
  struct Stacks {
    float* a = nullptr;
    float* b = nullptr;
    std::int64_t r = 0;  ///< the stacks' rank, ≥ the SVDs' (rows of A, columns of B past it zero)
    /// The files hold the module's weights in × out (transformers' Conv1D): run's `in` and `out`
    /// are then the module's out and in, M is Δ itself, and A = V_kᵀ, B = U_k S_k.
    bool stored_in_by_out = false;
  };
  /// run, with each task's factors A = U_kᵀ and B = V_k S_k (the ones `revmerge compress`
  /// writes) put straight into `stacks` instead of U and V coming back to the host: the factors
  /// of a merge never leave the device. The results hold norm_sq, nonfinite_at, the singular
  /// values and the captured energy; u and v stay empty. The stacks are complete when it
  /// returns (its stream is synchronized), for any stream to read.
  std::vector<DeltaSvd> run_into_stacks(const RawWeight& base,
                                        std::span<const RawWeight> fine_tunes, std::int64_t in,
                                        std::int64_t out, const RandomizedSvdOptions& options,
                                        const Stacks& stacks);
  /// Backend memory run() holds for a batch of `tasks` deltas of one in × out module whose files
  /// hold at most `element_bytes` per value.
  std::size_t work_bytes(std::int64_t tasks, std::int64_t in, std::int64_t out,
                         const RandomizedSvdOptions& options, std::size_t element_bytes) const;
  /// Keeps run()'s batches within `bytes` (the memory plan's share; without one, all tasks go in
  /// one batch). Never sized from what the device has free at the time, so that the same inputs
  /// give the same batches, and the same bytes, on every run.
  void limit_memory(std::size_t bytes) { limit_ = bytes; }

  /// Re-orthonormalisations so far (one per task and multiply, a redone task's counted again),
  /// how many of them fell back to Householder QR, and the tasks redone on their own because
  /// CholeskyQR2 failed for them somewhere in their batch's pass.
  struct Counts {
    std::int64_t orthonormalized = 0, householder = 0, redone = 0;
  };
  Counts counts() const { return counts_; }

 private:
  struct Shape;
  struct Batch;
  struct Staging;
  struct Scalars;
  std::vector<DeltaSvd> run_batches(const RawWeight& base, std::span<const RawWeight> fine_tunes,
                                    std::int64_t in, std::int64_t out,
                                    const RandomizedSvdOptions& options, const Stacks* stacks);
  std::vector<std::int64_t> run_batch(const DeviceBuffer& base_raw, DType base_dtype,
                                      std::span<const RawWeight> fine_tunes, std::span<DeltaSvd> results,
                                      const Shape& shape, const RandomizedSvdOptions& options,
                                      Staging& staging, const Stacks* stacks);
  void run_batch_checked(const DeviceBuffer& base_raw, DType base_dtype,
                         std::span<const RawWeight> fine_tunes, std::span<DeltaSvd> results,
                         const Shape& shape, const RandomizedSvdOptions& options, Staging& staging,
                         const Stacks* stacks);
  void form_deltas(Batch& b, const DeviceBuffer& base_raw, DType base_dtype,
                   std::span<const RawWeight> fine_tunes, const Shape& s,
                   const RandomizedSvdOptions& options, Staging& staging);
  template <class Orth>
  void subspace_iteration(Batch& b, const Shape& s, const RandomizedSvdOptions& options, Orth orth);
  void finish_factors(Batch& b, const Shape& s, const std::vector<double>& r,
                      std::span<DeltaSvd> results, const std::vector<char>& tasks, const Stacks* stacks);
  /// Fills a pinned staging buffer from the file's bytes and uploads it to `dst` on the copy
  /// stream, after `dst_free` (the compute that last read `dst`); the compute stream waits for it.
  void upload_weight(void* dst, const RawWeight& w, std::size_t count, Staging& staging,
                     const Event* dst_free = nullptr);
  void cholesky_rounds(Batch& b, const double* x, const Shape& s, std::int64_t rows);
  void orthonormalize_on_device(Batch& b, double* x, const Shape& s, std::int64_t rows);
  void orthonormalize(Batch& b, double* x, const Shape& s, std::int64_t rows,
                      std::vector<double>* r_out);
  void gemm(Op op_a, std::int64_t rows, std::int64_t cols, std::int64_t inner, const double* a,
            std::int64_t lda, std::int64_t stride_a, const double* b, std::int64_t ldb,
            std::int64_t stride_b, double* c, std::int64_t ldc, std::int64_t stride_c,
            std::int64_t batch);
  void to_host(void* dst, const void* src, std::size_t bytes);

  Backend& be_;
  Stream stream_;  ///< the compute
  Stream copy_;    ///< the weights' uploads
  std::size_t limit_ = std::numeric_limits<std::size_t>::max();
  Counts counts_;
};

/// The engine where it is the faster way — a backend with memory of its own, a GPU — or nullptr
/// where backend memory is host memory (the CPU backend, where pt_svd is faster).
std::unique_ptr<BatchedPtSvd> make_device_pt_svd(Backend& backend);

}  // namespace revmerge
