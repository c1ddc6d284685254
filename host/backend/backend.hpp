#pragma once
// The backend interface: the batched linear-algebra primitives the methods are written against.
// The CPU backend implements it with OpenBLAS / LAPACKE and OpenMP; the CUDA backend with cuBLAS,
// cuSOLVER and Thrust. Methods never see which one runs.
//
// Conventions: gemm computes in f32 on row-major matrices (the column-major translation for BLAS
// happens once, inside each backend's gemm); the f64 group, for the PT-SVD of full fine-tunes,
// takes column-major matrices as BLAS does. Per-position work is not a chain of primitives but
// one routine per method (host/kernels/) that every backend runs with the same bits. Every call
// is given the stream it runs on and is ordered after earlier work on that stream; calls on
// different streams may come from different threads. Memory passed in lives in the backend's space (device memory for
// CUDA) unless a parameter says "host".
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "kernels/elementwise.hpp"
#include "kernels/materialize.hpp"
#include "kernels/rmm_candidates.hpp"
#include "kernels/rmm_errors.hpp"
#include "kernels/rmm_position.hpp"
#include "revmerge/dtype.hpp"

namespace revmerge {

enum class BackendKind { cpu, cuda };

/// An execution queue: a cudaStream_t on CUDA; on the CPU, work runs when called.
struct Stream {
  void* handle = nullptr;
};

/// Memory owned by a backend; freed through the backend's deleter. Move-only.
class DeviceBuffer {
 public:
  using Deleter = void (*)(void* ctx, void* ptr);
  DeviceBuffer() = default;
  DeviceBuffer(void* ptr, std::size_t bytes, Deleter deleter, void* ctx) noexcept
      : ptr_(ptr), bytes_(bytes), deleter_(deleter), ctx_(ctx) {}
  DeviceBuffer(DeviceBuffer&& o) noexcept { swap(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    DeviceBuffer tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) deleter_(ctx_, ptr_);
  }

  void* data() const noexcept { return ptr_; }
  float* f32() const noexcept { return static_cast<float*>(ptr_); }
  std::size_t bytes() const noexcept { return bytes_; }

 private:
  void swap(DeviceBuffer& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    std::swap(deleter_, o.deleter_);
    std::swap(ctx_, o.ctx_);
  }
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
  Deleter deleter_ = nullptr;
  void* ctx_ = nullptr;
};

/// A point in a stream's work (a cudaEvent_t on CUDA; nothing on the CPU, where work runs when
/// called). Move-only; released through the backend's deleter.
class Event {
 public:
  using Deleter = void (*)(void* ctx, void* handle);
  Event() = default;
  Event(void* handle, Deleter deleter, void* ctx) noexcept
      : handle_(handle), deleter_(deleter), ctx_(ctx) {}
  Event(Event&& o) noexcept { swap(o); }
  Event& operator=(Event&& o) noexcept {
    Event tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() {
    if (handle_ != nullptr && deleter_ != nullptr) deleter_(ctx_, handle_);
  }
  void* handle() const noexcept { return handle_; }

 private:
  void swap(Event& o) noexcept {
    std::swap(handle_, o.handle_);
    std::swap(deleter_, o.deleter_);
    std::swap(ctx_, o.ctx_);
  }
  void* handle_ = nullptr;
  Deleter deleter_ = nullptr;
  void* ctx_ = nullptr;
};

/// A batch of row-major f32 matrices in backend memory: element (b, i, j) is at
/// data[b * stride + i * ld + j]. Non-owning.
struct MatBatch {
  float* data = nullptr;
  std::int64_t batch = 1, rows = 0, cols = 0;
  std::int64_t ld = 0;      ///< elements between consecutive rows, >= cols
  std::int64_t stride = 0;  ///< elements between consecutive matrices

  /// Densely packed batch × rows × cols.
  static MatBatch packed(float* data, std::int64_t batch, std::int64_t rows, std::int64_t cols) {
    return {data, batch, rows, cols, cols, rows * cols};
  }
};

enum class Op { none, transpose };

/// Bytes a backend's memory pool holds: handed out, cached for reuse, and the most ever held.
struct MemoryUse {
  std::size_t in_use = 0, cached = 0, peak = 0;
};

/// The primitives. Shapes are checked at this boundary (shape_error naming the operation);
/// library failures throw device_error / solver_error naming the call and its sizes.
class Backend {
 public:
  virtual ~Backend() = default;

  virtual BackendKind kind() const noexcept = 0;
  /// Human-readable: "cpu (OpenBLAS, 2 threads)", "cuda:0 NVIDIA H200".
  virtual std::string name() const = 0;

  // --- memory and ordering ---
  /// Backend memory from the backend's pool. Methods keep a buffer until the work that uses it
  /// has run (synchronize, or an event waited on): the deferred test backend makes an early
  /// release show as NaN or an error. The GPU's pool is stream-ordered besides — a block given
  /// back with work still queued on the backend's streams is not handed out again before that
  /// work has run — which the backend's own calls rely on for their scratch.
  virtual DeviceBuffer allocate(std::size_t bytes) = 0;
  /// Host memory the backend copies from and to fastest (pinned on CUDA), for staging buffers.
  virtual DeviceBuffer allocate_staging(std::size_t bytes) = 0;
  /// True when backend memory is host memory (the CPU): staged inputs need no upload.
  virtual bool shares_host_memory() const noexcept = 0;
  /// What the backend's pool holds (device memory; host memory for the CPU backend).
  virtual MemoryUse memory_use() const = 0;
  /// Memory the backend could still allocate: free device memory plus its cache (the CPU:
  /// the host's MemAvailable plus the cache).
  virtual std::size_t memory_available() const = 0;
  /// Keeps the pool (blocks in use plus cached) within `bytes` by freeing cached blocks before
  /// a new block would pass it; what is in use is the caller's to plan.
  virtual void limit_cache(std::size_t bytes) = 0;
  /// A new execution queue owned by the backend, independent of the default one (a second
  /// cudaStream_t for copies while the default stream computes; nothing on the CPU).
  virtual Stream create_stream() = 0;
  virtual void upload(void* dst, const void* host_src, std::size_t bytes, Stream s) = 0;
  virtual void download(void* host_dst, const void* src, std::size_t bytes, Stream s) = 0;
  /// Waits until all work on `s` is done.
  virtual void synchronize(Stream s) = 0;

  // --- ordering between streams and with the host ---
  /// An event recorded on `s`: it completes when the work queued on `s` before it has run.
  virtual Event record_event(Stream s) = 0;
  /// Work queued on `s` after this call runs only once `e` has completed (no host wait).
  virtual void wait_event(Stream s, const Event& e) = 0;
  /// Waits on the host until `e` has completed.
  virtual void synchronize_event(const Event& e) = 0;
  /// True when `e` has completed; never waits.
  virtual bool query_event(const Event& e) = 0;
  /// dst = src, `bytes` bytes of backend memory, ordered on `s`.
  virtual void copy(void* dst, const void* src, std::size_t bytes, Stream s) = 0;
  /// Sets `bytes` bytes of backend memory at `dst` to `value`, ordered on `s`.
  virtual void fill(void* dst, unsigned char value, std::size_t bytes, Stream s) = 0;

  // --- linear algebra ---
  /// C = alpha · op(A) · op(B) + beta · C for every matrix of the batch (A or B may have
  /// batch 1 with stride 0 to broadcast). f32 inputs, f32 accumulation, no TF32.
  virtual void gemm(Op op_a, Op op_b, float alpha, const MatBatch& a, const MatBatch& b,
                    float beta, const MatBatch& c, Stream s) = 0;
  /// Into how many pieces a batch of `batch` products of rows × cols over `inner` should be
  /// split along `inner` (split-K, the pieces summed by the caller in a fixed order) to keep
  /// the backend busy: 1 on the CPU, where the batch alone fills the threads.
  virtual std::int64_t split_k_hint(std::int64_t batch, std::int64_t rows, std::int64_t cols,
                                    std::int64_t inner) const = 0;

  // --- the per-position routines (host/kernels/), the same arithmetic on every backend ---
  /// kernels::rmm_position for every position of both sides of `args` (in + out of them; all
  /// pointers in backend memory). The CPU runs positions in blocks, one thread and one
  /// position at a time; the GPU a warp or a block of threads per position. Same bits.
  virtual void rmm_positions(const kernels::RmmModuleArgs& args, Stream s) = 0;
  /// kernels::RmmChunkSums over every element, kernels::RmmErrorRowDots over every row of the
  /// dots, then kernels::RmmErrorDots over every term.
  virtual void rmm_error_terms(const kernels::RmmErrorArgs& args, Stream s) = 0;
  /// The budgeted store's RMM candidates (kernels/rmm_candidates.hpp): for every basis size p
  /// of `args` and every task, D_pᵀ[D_p | X] over the side's positions into args.grams. D_p's
  /// elements are kernels::RmmCandidateRows' on every backend; the products run in f32 over
  /// runs of positions the backend chooses, the runs added in f64 in order — the one place the
  /// backends' bits may differ (these are the allocation's estimates, not what is reported).
  virtual void rmm_candidate_grams(const kernels::RmmCandidateArgs& args, Stream s) = 0;
  /// Every output element of `args` (kernels::materialize_element, rounded to each part's
  /// dtype); the parts table, the stored tensors and the outputs in backend memory. The CPU
  /// runs a tile of rows × columns per step, the GPU a block per 32 × 32 tile, in one launch
  /// (its kernel chosen by args.source_type and out_type, which every part shares). Same bits.
  virtual void materialize(const kernels::MaterializeArgs& args, Stream s) = 0;
  /// kernels::elementwise_index for every index of `step` (kernels::step_indices): one step of
  /// an element-wise classic merge over a piece of a tensor. Same bits.
  virtual void elementwise(const kernels::ElementwiseStep& step, Stream s) = 0;

  // --- f64, column-major: the PT-SVD of full fine-tunes (methods/lowrank/batched_pt_svd.hpp) ---
  /// C = op(A) · B for every matrix of the batch; a stride of 0 broadcasts A or B.
  virtual void gemm_f64(Op op_a, std::int64_t rows, std::int64_t cols, std::int64_t inner,
                        const double* a, std::int64_t lda, std::int64_t stride_a, const double* b,
                        std::int64_t ldb, std::int64_t stride_b, double* c, std::int64_t ldc,
                        std::int64_t stride_c, std::int64_t batch, Stream s) = 0;
  /// For each symmetric n × n matrix G of `g` (packed): its Cholesky factor R (upper, RᵀR = G)
  /// over G's upper triangle, and R⁻¹ (packed, zeros below the diagonal) in `inverse`. info[b]
  /// is 0, or the order of the first leading minor that is not positive definite (R and R⁻¹
  /// are then meaningless). No error is raised for such a matrix: the caller decides.
  virtual void cholesky_inverse_f64(double* g, double* inverse, std::int64_t n,
                                    std::int64_t batch, int* info, Stream s) = 0;
  /// kernels::CholeskyQrVerdict for each of `batch` second-round factors r2 (n × n, packed) with
  /// the two rounds' info words (`infos`, 2 · batch): clears held[b] where CholeskyQR2 did not
  /// hold. On the stream, for the host to read once per module instead of once per step.
  virtual void cholesky_qr_verdict_f64(const double* r2, const int* infos, std::int64_t n,
                                       std::int64_t batch, double tolerance, int* held,
                                       Stream s) = 0;
  /// Householder QR of one rows × cols matrix in place: Q's columns replace it, and R (cols ×
  /// cols, zeros below the diagonal) goes to `r_host` when given. Waits for the stream.
  virtual void householder_qr_f64(double* x, std::int64_t rows, std::int64_t cols,
                                  double* r_host, Stream s) = 0;
  /// Pool memory householder_qr_f64 takes while it runs.
  virtual std::size_t householder_qr_f64_work_bytes(std::int64_t rows, std::int64_t cols) = 0;
  /// out[b] = Σ_i x[b · count + i]², for packed batch × count values.
  virtual void sum_squares_f64(const double* x, std::int64_t count, std::int64_t batch,
                               double* out, Stream s) = 0;
  /// delta[i] = ft[i] − base[i] in f64 from two arrays of F64, F32, F16 or BF16 values; where a
  /// difference is not finite, *first_bad becomes the smallest such i if that is less than it.
  virtual void delta_f64(const void* ft, DType ft_type, const void* base, DType base_type,
                         double* delta, std::int64_t count, std::uint64_t* first_bad,
                         Stream s) = 0;
  /// out[i] = kernels::counter_normal(seed, stream_id, i) for i < count: a Gaussian sketch that
  /// is the same numbers on every backend (to the last ulp of log and cos).
  virtual void gaussian_f64(double* out, std::int64_t count, std::uint64_t seed,
                            std::uint64_t stream_id, Stream s) = 0;
  /// The LoRA stacks of `tasks` truncated SVDs Δ_t ≈ V S Uᵀ (u: tasks × in × k, v: tasks × out
  /// × k, column-major; s: tasks × k): A (tasks × r × in, f32) holds Uᵀ and B (tasks × out × r)
  /// holds V S, rows of A and columns of B from k to r zero (kernels::LoraStackA / B).
  virtual void lora_stacks_f64(const double* u, const double* v, const double* s,
                               std::int64_t tasks, std::int64_t in, std::int64_t out,
                               std::int64_t k, std::int64_t r, float* a, float* b, Stream st) = 0;

  // --- f64, row-major: the budgeted store's shared bases (methods/store/shared_rows.hpp) ---
  /// G = X Xᵀ (rows × rows, row-major, the two triangles bitwise equal) of X, rows × cols f32
  /// row-major: every product exact in f64, summed in f64.
  virtual void gram_f64(const float* x, std::int64_t rows, std::int64_t cols, double* g,
                        Stream s) = 0;
  /// The eigendecomposition of the symmetric n × n row-major `a`, its upper triangle read:
  /// eigenvalues ascending into `w`, eigenvectors into a's columns; *info is 0, or the solver's
  /// code where it failed (no error is raised: the caller reads it and decides).
  virtual void symmetric_eigen_f64(double* a, std::int64_t n, double* w, int* info, Stream s) = 0;
  /// C = alpha · op_a(A) · op_b(B), row-major: C rows × cols, op_a(A) rows × inner, op_b(B)
  /// inner × cols, each with its leading dimension. The shared bases' products of factors and
  /// bases (methods/store/shared_basis.hpp). CPU: one cblas_dgemm, the call the host made.
  virtual void gemm_f64_rows(Op op_a, Op op_b, std::int64_t rows, std::int64_t cols, std::int64_t inner,
                             double alpha, const double* a, std::int64_t lda, const double* b, std::int64_t ldb,
                             double* c, std::int64_t ldc, Stream s) = 0;
};

/// Options for creating a backend.
struct BackendOptions {
  int threads = 0;  ///< CPU worker threads; 0 = all cores
  int device = 0;   ///< CUDA device index
};

/// The CPU backend (always available).
std::unique_ptr<Backend> make_cpu_backend(const BackendOptions& options = {});

}  // namespace revmerge
