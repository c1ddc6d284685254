#pragma once
// Shared pieces of the classic-method drivers (adapters and checkpoints).
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "revmerge/checkpoint.hpp"
#include "revmerge/classic.hpp"
#include "revmerge/hf_model.hpp"

namespace revmerge {

class Backend;

/// The per-task weights (default 1), densities (default 1), gammas (default 0.01) and epsilons
/// (default 0.15) of a merge of n tasks — one value for all or one per task — checked: counts,
/// finiteness, densities and gammas in [0, 1], DELLA's density ± ε inside (0, 1).
struct TaskParameters {
  std::vector<double> weights, densities, gammas, epsilons, scales;
};
TaskParameters task_parameters(const ClassicMergeOptions& options, std::size_t n);

struct CombineRecipe;

/// The parameters in effect, defaults included and said to be (ClassicMergeReport::parameters):
/// `recipe` null for cat and svd; `rank` the written adapter's target rank (0: a model);
/// `dtype` the output dtype as written.
std::vector<std::pair<std::string, std::string>> classic_parameters(const ClassicMergeOptions& options,
                                                                    const TaskParameters& p,
                                                                    const CombineRecipe* recipe,
                                                                    std::int64_t rank,
                                                                    const std::string& dtype);

/// Refuses options (and per-tensor parameters) the method does not take, naming the option.
void check_options_fit_method(const ClassicMergeOptions& options);
/// slerp and nearswap: the base and one fine-tune blended by t.
bool blends_two_models(ClassicMethod method);
/// Refuses --weights, --lambda, --normalize and --rescale for a method that has none of them.
void refuse_weighting_options(const ClassicMergeOptions& options);
/// Whether the method works element by element in the combine recipe (not cat, svd, or the
/// two-model blends).
bool is_elementwise(ClassicMethod method);

/// The output's recipe file: the method, its mode and every parameter of the report, the tasks.
std::pair<std::string, std::string> classic_recipe_file(const ClassicMergeOptions& options,
                                                        const ClassicMergeReport& report);
/// A merged full model's README.md model card (as mergekit writes one).
std::pair<std::string, std::string> classic_model_card(const ClassicMergeOptions& options,
                                                       const ClassicMergeReport& report);

/// Full models: every model holds exactly the base's tensors, with the base's shapes (shape_error
/// naming the task and tensor otherwise).
void check_same_tensors(const HfModel& base, const std::vector<std::unique_ptr<HfModel>>& models,
                        const std::vector<TaskSource>& tasks);
/// mergekit's MODEL+LORA: `model` with the PEFT adapter merged into it (W + scale·B·A, summed in
/// f64), written at `out`; the adapted tensors in f32, every other tensor as stored.
void write_model_with_lora(const std::filesystem::path& model, const std::filesystem::path& adapter,
                           const std::filesystem::path& out, int threads);
/// merge_classic for options with MODEL+LORA inputs: each written beside the output, the merge
/// run on those folders (their MODEL+LORA recorded as the inputs), the folders removed after.
ClassicMergeReport merge_with_loras_applied(const ClassicMergeOptions& options);
/// The tasks' model folders, opened in order.
std::vector<std::unique_ptr<HfModel>> open_task_models(const ClassicMergeOptions& options);
/// How a full model is written for these options: their dtype, --force and progress, the recipe
/// file (`report` as it will be returned; what the options leave out, such as `chat_template:
/// auto` finding none, joins its warnings).
struct ModelOutputOptions;
ModelOutputOptions model_output_options(const ClassicMergeOptions& options, ClassicMergeReport& report);
/// One input of a piece: its tensor, the words that name it in messages ("the base", "task
/// 'a'"), where its f32 values go, and what is subtracted from them (null: nothing; an earlier
/// part's `out`, read first).
struct PartToRead {
  const CheckpointTensor* tensor = nullptr;
  const std::string* where = nullptr;
  float* out = nullptr;  ///< the piece's values (unused when read run by run)
  int minus = -1;        ///< an earlier part, whose values are subtracted from this one's; -1: none
};
/// Elements [first, first + count) of every part's tensor as f32, converted and checked on
/// `threads` threads, refusing non-finite values (format_error naming file, tensor, element and
/// `where`; the first part in order that has one), the `minus` part's values subtracted once
/// checked; the parts' pages dropped from the resident set once read where `drop_pages`. The
/// elements are read in runs cut at multiples of `run` elements of the tensor, each run from
/// every part in order. Without `then`, into each part's `out`. With it, into memory of the
/// reading thread (part k's run at values + k · run), given to `then(begin, end, values)`
/// (begin and end: offsets in the piece) on that thread while the run is in its cache, unless
/// one of its values is not finite; `then` must not throw.
using RunValues = std::function<void(std::int64_t, std::int64_t, float*)>;
void read_finite_parts(std::span<const PartToRead> parts, std::int64_t first, std::size_t count, int threads,
                       bool drop_pages, std::int64_t run, const RunValues& then);

/// mergekit's per-tensor parameters (tensor_parameters.cpp): whether any are set, and whether
/// `key` is; a tensor's position among the layers (layer i of L at i / (L − 1), 0 outside the
/// layers); the options with every per-tensor parameter resolved for one tensor (the options
/// themselves where none is set); and a check of every tensor's values before a merge starts
/// (usage_error naming the tensor).
bool has_tensor_parameters(const ClassicMergeOptions& options);
bool is_set_per_tensor(const ClassicMergeOptions& options, const std::string& key);
double layer_position(const std::string& tensor, std::int64_t layers);
ClassicMergeOptions options_for_tensor(const ClassicMergeOptions& options, const std::string& tensor, double t);
void check_tensor_parameters(const ClassicMergeOptions& options, const HfModel& layout);

ClassicMergeReport merge_classic_adapters(const ClassicMergeOptions& options);
ClassicMergeReport merge_classic_checkpoints(const ClassicMergeOptions& options);
/// The same with the element-wise merges on the backend `make` returns (made when the first
/// tensor is merged; empty: on the CPU, whatever options.device says) — tests give the CPU and
/// the deferred test backends.
ClassicMergeReport merge_classic_checkpoints_on(const ClassicMergeOptions& options,
                                                const std::function<std::unique_ptr<Backend>()>& make);

// Full models are merged one output tensor at a time: the driver (checkpoint_merge.cpp) checks
// the options once, gathers each tensor's inputs, resolves its per-tensor parameters and hands
// it to the method's per-tensor arithmetic below.

/// A vector whose growth leaves the new elements uninitialised: the drivers' buffers are written
/// before they are read, and zeroing hundreds of MB whenever a tensor is larger than the last
/// would cost a pass over memory.
template <class T>
struct UninitializedAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = UninitializedAllocator<U>;
  };
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    if constexpr (sizeof...(Args) == 0) ::new (static_cast<void*>(p)) U;
    else ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
using FloatBuffer = std::vector<float, UninitializedAllocator<float>>;

/// One output tensor's inputs: its name (in messages, and keying DARE's and DELLA's masks), its
/// shape, the base's values (empty without a base) and the tasks', one after another in task
/// order (n × count: the element-wise methods combine them where they lie). A driver keeps one
/// and reuses its memory from tensor to tensor. Merged in pieces (piece_merge.hpp), it holds
/// elements [first, first + count) of the tensor.
struct TensorInputs {
  std::string name;
  std::vector<std::int64_t> shape;
  FloatBuffer base;
  FloatBuffer stacked;
  std::size_t n = 0, count = 0;
  std::int64_t first = 0;

  std::span<float> model(std::size_t i) { return {stacked.data() + i * count, count}; }
  std::span<const float> model(std::size_t i) const { return {stacked.data() + i * count, count}; }
};

/// Whether the method needs a base (true), refuses one (false: linear), or takes either
/// (nuslerp, multislerp, karcher).
std::optional<bool> needs_base(ClassicMethod method);
/// The method's checks of the options, before any file is read (usage_error naming the option).
void check_checkpoint_options(const ClassicMergeOptions& options);
/// The merged tensor from `in` (the whole tensor) under `options` (per-tensor parameters
/// resolved): the whole-tensor definitions of the element-wise, spherical and selective methods,
/// straight from their formulas. Merges run the piece mergers (piece_merge.hpp); these are the
/// reference the mergers are checked against bit for bit (tests/methods/classic/
/// piece_merge_test.cpp). `in` may be consumed.
void merge_whole_tensor(const ClassicMergeOptions& options, TensorInputs& in, std::span<float> out, int threads);

/// Each method family's part (its own file).
bool is_spherical(ClassicMethod method);  ///< nuslerp, multislerp, karcher
bool is_selective(ClassicMethod method);  ///< ram, ramplus_tl, arcee_fusion
void check_two_model_options(const ClassicMergeOptions& options);
void check_model_stock_options(const ClassicMergeOptions& options);
void check_spherical_options(const ClassicMergeOptions& options);
void check_selective_options(const ClassicMergeOptions& options);
void check_passthrough_options(const ClassicMergeOptions& options);
void spherical_tensor(const ClassicMergeOptions& options, const TensorInputs& in, std::span<float> out);
void selective_tensor(const ClassicMergeOptions& options, const TensorInputs& in, std::span<float> out, int threads);

/// ram's and ramplus_tl's parameters for a tensor, checked (`tensor` names where they were
/// resolved; empty: the merge's options).
struct RamParameters {
  double epsilon = 1e-5, r = 0.1, alpha = 0.2;
  bool plus = false;
};
RamParameters ram_parameters(const ClassicMergeOptions& options, const std::string& tensor);
/// ramplus_tl's factor for a task's unique changes, from its changes shared with other tasks
/// and its unique ones in the tensor: 1 + r · min(α, shared / max(unique, ε)).
double ram_scale(const RamParameters& p, double shared, double unique);

/// arcee_fusion's quartiles of a tensor's `numel` importances: the ranks ⌊q · (numel − 1)⌋ of
/// q = 1/4, 1/2, 3/4 among them (ascending), and its threshold from their values,
/// median + 1.5 · (q₃ − q₁).
std::vector<std::int64_t> fusion_ranks(std::int64_t numel);
double fusion_threshold(double q1, double median, double q3);
/// arcee_fusion's divergence of each row of `row` elements of w (the fine-tune) and b (the base),
/// on `threads` threads: kernels::fusion_row_kl's bits, its maxima and sums in vector registers.
std::vector<double> fusion_rows(std::span<const float> w, std::span<const float> b, std::int64_t row, int threads);

/// Layer stacking (slices.cpp): the output's blocks from `options.slices`; with `make`, every
/// block merged on the backend it makes (each slice's method and parameters as on the CPU, the
/// same bytes), a slice it cannot run refused by name before anything is written.
ClassicMergeReport merge_layer_slices(const ClassicMergeOptions& options,
                                      const std::function<std::unique_ptr<Backend>()>& make = {});

}  // namespace revmerge
