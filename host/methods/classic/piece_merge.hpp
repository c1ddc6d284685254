#pragma once
// Full-model merges under a memory budget: each output tensor is merged in pieces (runs of
// whole rows), read, merged and written one piece at a time, so that a 70B embedding costs no
// more memory than the budget allows. A method that needs statistics of the whole tensor (trim
// thresholds, L1 norms, SLERP's angle, model_stock's cosines) gathers them in passes over the
// pieces first, exactly (selection by radix histograms, not sampling), and its output is
// bitwise the same for any piece size: one piece is the whole tensor.
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/elementwise.hpp"
#include "methods/classic/classic_internal.hpp"

namespace revmerge {

/// One run of a piece as the driver read it for a merger that works in runs: elements
/// [first, first + count) of the tensor, the base's at `base` (null: none; subtracted from the
/// tasks' where the merger wants task vectors) and task t's at `tasks + t · stride`, in memory of
/// the thread that read them.
struct RunInputs {
  std::int64_t first = 0, count = 0, stride = 0;
  std::size_t n = 0;
  const float* base = nullptr;
  float* tasks = nullptr;
  std::span<float> model(std::size_t t) const {
    return {tasks + t * static_cast<std::size_t>(stride), static_cast<std::size_t>(count)};
  }
};
/// A whole piece as one run.
RunInputs whole_run(TensorInputs& in);

/// One tensor's merge, piece by piece. The driver calls, for every pass the merger wants, each
/// piece's observe, then end_pass; then each piece's produce. Pieces
/// come in order, cover the tensor once per pass, and hold a multiple of granule() elements.
/// `in` holds the piece (TensorInputs::first, count) of the base and of every task.
class PieceMerger {
 public:
  virtual ~PieceMerger() = default;
  /// Elements a piece holds a multiple of: 1, a row, or the whole tensor (no pieces).
  virtual std::int64_t granule() const { return 1; }
  /// Memory per element of a piece the merger holds besides the driver's buffers.
  virtual std::uint64_t extra_bytes_per_element() const { return 0; }
  /// Memory the merger holds for the whole tensor whatever the pieces' size, at most, when its
  /// runs come on `threads` threads: statistics per block, histograms. The driver takes it from
  /// the budget before cutting pieces.
  virtual std::uint64_t held_bytes(int /*threads*/) const { return 0; }
  virtual bool wants_pass() const { return false; }
  /// Whether the merger keeps per-element state between passes when a tensor is one piece
  /// (DELLA's decisions): the driver then cuts pieces only as small as the budget needs, not down
  /// to cache size.
  virtual bool whole_tensor_saves_work() const { return false; }
  /// Whether the tasks' pieces are wanted as task vectors: the base's piece subtracted (in f32)
  /// as each is read.
  virtual bool task_vectors() const { return false; }
  virtual void observe(const TensorInputs&, int /*threads*/) {}
  virtual void end_pass() {}
  /// The merged piece into `out` (count elements); `in` may be consumed.
  virtual void produce(TensorInputs& in, std::span<float> out, int threads) = 0;

  /// Whether the merger works run by run: then the driver reads each run of a piece and, on the
  /// same thread while the run is in cache, calls observe_run (in passes) or produce_run in
  /// place of observe and produce. Runs are disjoint, cut at multiples of run_elements()
  /// elements of the tensor, and come on several threads at once, in any order; neither call
  /// may throw.
  virtual bool works_in_runs() const { return false; }
  /// The elements of a whole run: kRunAlign, or (a merger that needs whole rows) a multiple of
  /// granule(). A piece's last run may be shorter.
  virtual std::int64_t run_elements() const { return kRunAlign; }
  /// Before each pass in runs: they come on OpenMP threads numbered below `threads`.
  virtual void start_runs(int /*threads*/) {}
  virtual void observe_run(const RunInputs&) {}
  /// The merged run into `out` (run.count elements); the run's values may be consumed.
  virtual void produce_run(const RunInputs&, std::span<float> /*out*/) {}
  /// Runs are cut at multiples of this many elements of the tensor: a multiple of the
  /// statistics blocks (kernels::kStatBlock), so that no two runs add into one block's lanes.
  static constexpr std::int64_t kRunAlign = std::int64_t{1} << 14;
};

/// The threads a tensor of `numel` elements is read and merged on, run by run, given `threads`:
/// no more than it has cells of kRunAlign elements (each thread takes whole runs).
int run_threads(int threads, std::int64_t numel);

/// The merger of one tensor (`options` with its per-tensor parameters resolved), `n` tasks.
std::unique_ptr<PieceMerger> piece_merger(const ClassicMergeOptions& options, const std::string& name,
                                          const std::vector<std::int64_t>& shape, std::size_t n,
                                          bool has_base);

/// The methods' own mergers (their files); null where a method has none yet and needs the
/// whole tensor.
std::unique_ptr<PieceMerger> combine_merger(const ClassicMergeOptions& options, const std::string& name,
                                            const std::vector<std::int64_t>& shape, std::size_t n,
                                            bool has_base);
std::unique_ptr<PieceMerger> two_model_merger(const ClassicMergeOptions& options, const std::string& name,
                                              std::int64_t count);

/// slerp's and nearswap's t for tensor `name` (usage_error when missing or out of range).
double two_model_t(const ClassicMergeOptions& options, const std::string& name);

/// Every index of a kernels/elementwise.hpp step whose pointers are host memory, on `threads`
/// threads (what a backend's elementwise runs, without a backend).
void run_host_step(const kernels::ElementwiseStep& step, int threads);

/// SLERP's sums over a tensor of `count` elements — ‖v0‖², ‖v1‖², v0 · v1 — kept per statistics
/// block and lane (kernels/elementwise.hpp's dot_lanes, each lane in index order), so that the
/// pieces, the threads and a backend all give the same bits.
class SlerpSums {
 public:
  explicit SlerpSums(std::int64_t count);
  /// The sums of `count` elements at `first` of v0 (the base) and v1, on the calling thread (the
  /// bits of step()); runs on other threads may add at once where they share no statistics block.
  void add_run(std::int64_t first, const float* v0, const float* v1, std::int64_t count);
  /// The dot_lanes step of a piece at `first` into `lanes` (lane_count() values, in backend
  /// memory for a backend's step).
  kernels::ElementwiseStep step(std::int64_t first, std::int64_t count, float* v0, float* v1, double* lanes) const;
  std::size_t lane_count() const noexcept { return lanes_.size(); }
  /// The sums' lanes, for a backend to download into.
  std::vector<double>& lanes() noexcept { return lanes_; }
  /// The two coefficients (s0, s1) of W = s0 v0 + s1 v1 (mergekit's slerp: linear where the
  /// directions are nearly parallel).
  std::pair<double, double> coefficients(double t) const;

 private:
  std::int64_t blocks_;
  std::vector<double> lanes_;
};
std::unique_ptr<PieceMerger> model_stock_merger(const ClassicMergeOptions& options,
                                                const std::vector<std::int64_t>& shape, std::size_t n);

/// model_stock's sums over a tensor of `count` elements and n task vectors δ_a = w_a − w0 —
/// each ‖δ_a‖² and every pair's δ_a · δ_b — kept per block and lane (kernels/elementwise.hpp's
/// stock_lanes, each lane in index order), so that the pieces, the threads and a backend all
/// give the same bits.
class StockSums {
 public:
  StockSums(std::int64_t count, std::size_t n);
  /// The stock_lanes step of a piece at `first` (the base and the n models' pieces, one after the
  /// other) into `lanes` (lane_count() values, in backend memory for a backend's step).
  kernels::ElementwiseStep step(std::int64_t first, std::int64_t count, float* base, float* models,
                                double* lanes) const;
  std::size_t lane_count() const noexcept { return lanes_.size(); }
  std::vector<double>& lanes() noexcept { return lanes_; }
  /// Sum q's lanes at q · stride().
  std::int64_t stride() const noexcept { return blocks_ * kernels::kStatLanes; }
  /// t of W = w0 + t · mean(δ), from the sums.
  double t() const;

 private:
  int n_;
  std::int64_t block_, blocks_;
  std::vector<double> lanes_;
};

/// model_stock's per-element step over a piece: W = w0 + t · mean(δ) (`kind` stock_blend), t
/// the tensor's or, with `row_t`, each row's; or (`kind` stock_rows) each row's t into row_t.
kernels::ElementwiseStep stock_step(kernels::ElementwiseKind kind, int n, std::int64_t count, float* base,
                                    float* models, double t, std::int64_t row, double* row_t, float* out);
std::unique_ptr<PieceMerger> passthrough_merger(const ClassicMergeOptions& options);
/// How nuslerp cuts one tensor (its options resolved for it): t, and the tensor as one vector
/// (layout 0), each row of `row` elements one vector (1), or each of `row` columns one vector
/// (2, along the first axis).
struct NuslerpPlan {
  double t = 0.5;
  int layout = 0;
  std::int64_t row = 0;
};
NuslerpPlan nuslerp_plan(const ClassicMergeOptions& options, const std::string& name,
                         const std::vector<std::int64_t>& shape);
/// One vector's blend coefficients from its sums Σa², Σb², Σab: {linear (1 or 0), c0, c1, sin θ}
/// (what kernels::pair_blend takes).
std::array<double, 4> nuslerp_coefficients(double t, double s00, double s11, double s01);
/// A nuslerp step (kernels/elementwise.hpp's pair_*) over a piece at `first`: the two models at
/// `models` (2 × count), the base at `base` (null: none), the sums at sums[0 … 2], coefficients
/// at `coef`, into out.
kernels::ElementwiseStep nuslerp_step(kernels::ElementwiseKind kind, const NuslerpPlan& plan, std::int64_t first,
                                      std::int64_t count, float* models, float* base, double* const* sums,
                                      const double* coef, float* out);

/// The spherical methods' weights for tensor `tensor` (its options resolved); multislerp's
/// normalised to sum 1 unless normalize_weights is off (usage_error naming --weights when they
/// sum to 0).
std::vector<double> spherical_weights(const ClassicMergeOptions& options, const std::string& tensor);

/// multislerp's and karcher's sums over a tensor of `count` elements: the Gram matrix of their
/// vectors (karcher's models, the base first where there is one; multislerp's task vectors, or
/// its models without a base), kept per statistics block and lane (kernels/elementwise.hpp's
/// gram_lanes); then the method's decisions on the host (`decide`: the Gram sums in
/// kernels::stock_pair's order → a coefficient per vector) into table(), for the blend
/// Σ_i c_i v_i. The same bits from pieces, threads and backends.
class SphereSums {
 public:
  using Decide = std::function<std::vector<double>(const std::vector<double>& gram)>;
  SphereSums(std::int64_t count, int vectors, bool task_vectors, Decide decide);
  bool wants_pass() const noexcept { return !summed_; }
  /// The pass's step over a piece at `first`: the tasks (n × count), the base (null: none), the
  /// lanes where the step runs (host or backend memory, as lanes() holds them now).
  kernels::ElementwiseStep step(std::int64_t first, std::int64_t count, float* tasks, float* base, double* lanes) const;
  /// The Gram sums, sum q's lanes at q · stride().
  std::vector<double>& lanes() noexcept { return lanes_; }
  std::size_t lane_count() const noexcept { return lanes_.size(); }
  std::int64_t stride() const noexcept { return blocks_ * kernels::kStatLanes; }
  /// The coefficients decided from lanes() (decide's errors pass through).
  void end_pass();
  /// The merged values over a piece, into out, with the coefficients at `table` (host or backend
  /// memory, as table() holds them).
  kernels::ElementwiseStep blend(std::int64_t count, float* tasks, float* base, const double* table, float* out) const;
  const std::vector<double>& table() const noexcept { return table_; }
  int vectors() const noexcept { return vectors_; }
  bool task_vectors() const noexcept { return task_vectors_; }

 private:
  int vectors_;
  bool task_vectors_;
  Decide decide_;
  std::int64_t blocks_;
  std::vector<double> lanes_, table_;
  bool summed_ = false;
};

/// The SphereSums of --method karcher or multislerp for tensor `name` (its options resolved) of
/// `count` elements, n tasks.
SphereSums sphere_sums(const ClassicMergeOptions& options, const std::string& name, std::int64_t count, std::size_t n,
                       bool has_base);

/// The gram_lanes step's sums (kernels/elementwise.hpp; stock_lanes' too, in blocks of
/// `block_size`) over elements [a, a + m) of the tensor on this thread: x[q] holds vector q's
/// values of them, less `base`'s in f64 where it is given (task vectors). A block's eight lanes
/// at a time, each lane's elements still added in index order: the steps' bits.
void gram_lanes_run(double* lanes, std::int64_t stride, int vectors, std::int64_t a, const float* const* x,
                    const float* base, std::int64_t m, std::int64_t block_size);

/// karcher's decisions from its models' Gram sums: each model's coefficient in the merged tensor.
std::vector<double> karcher_coefficients(const std::vector<double>& gram, std::size_t models, std::int64_t max_iter,
                                         double tol);
/// multislerp's decisions from its vectors' Gram sums (weights `w`, normalised as the options
/// ask): each vector's coefficient; a format_error naming `tensor` where the directions' mean
/// vanishes with more than two vectors.
std::vector<double> multislerp_coefficients(const std::vector<double>& gram, const std::vector<double>& w, double eps,
                                            const std::string& tensor);

/// passthrough's step over a piece: the model's values x times `scale` into out.
kernels::ElementwiseStep passthrough_step(float* x, std::int64_t count, double scale, float* out);
std::unique_ptr<PieceMerger> sce_merger(const ClassicMergeOptions& options, const std::vector<std::int64_t>& shape,
                                        std::size_t n, bool has_base);
std::unique_ptr<PieceMerger> spherical_merger(const ClassicMergeOptions& options, const std::string& name,
                                              const std::vector<std::int64_t>& shape, std::size_t n,
                                              bool has_base);
std::unique_ptr<PieceMerger> selective_merger(const ClassicMergeOptions& options, const std::string& name,
                                              const std::vector<std::int64_t>& shape, std::size_t n);

/// Where one output tensor's inputs are: the base's (null without one) and each task's, with
/// the words that name them in messages ("the base", "task 'a'").
struct TensorSources {
  const CheckpointTensor* base = nullptr;
  std::string base_where;
  std::vector<const CheckpointTensor*> models;
  std::vector<std::string> model_where;
};

/// How a merge's tensors are cut: at most `max_elements` per piece; `budget` (0: none given)
/// for the message when a tensor cannot be cut that small.
struct PiecePlan {
  std::int64_t max_elements = 0;
  std::uint64_t budget = 0;
  std::uint64_t bytes_per_element = 0;  ///< the driver's buffers and one input's mapped pages
  std::uint64_t write_behind_bytes = 0;  ///< the writer's queue (ModelOutputOptions), outside the pieces' room
};

/// The plan for merging n tasks (and a base) under `budget` bytes (0: half the memory available).
PiecePlan plan_pieces(std::size_t n, bool has_base, std::uint64_t budget, bool budget_given);

/// The parts tensors copied unchanged are written in (ModelOutputOptions::piece_bytes).
std::uint64_t copy_piece_bytes(const PiecePlan& plan);

/// Refuses (usage_error naming the option, method, tensor and the memory it needs) a tensor whose
/// merger cannot be cut to the plan's pieces, when a budget was given; `threads` as
/// merge_in_pieces will be given.
void check_fits(const PiecePlan& plan, const PieceMerger& merger, const std::string& method,
                const std::string& tensor, std::int64_t numel, int threads);

/// Merges one tensor from `sources` in pieces, giving each merged piece to `sink(first, values)`.
/// `buffers` keeps its memory from tensor to tensor.
void merge_in_pieces(PieceMerger& merger, const std::string& name, const std::vector<std::int64_t>& shape,
                     const TensorSources& sources, const PiecePlan& plan, TensorInputs& buffers,
                     FloatBuffer& out,
                     const std::function<void(std::uint64_t, std::span<const float>)>& sink, int threads);

}  // namespace revmerge
