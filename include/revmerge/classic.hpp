#pragma once
/// \file
/// The classic merging methods — task arithmetic, TIES, DARE, DARE-TIES, magnitude pruning,
/// and for LoRA the exact `cat` and the `svd` re-factorisation — on PEFT adapters and on full
/// Hugging Face checkpoints. Definitions follow PEFT on adapters and mergekit on checkpoints;
/// docs/methods.md gives the arithmetic and every place the two tools differ.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "revmerge/devices.hpp"
#include "revmerge/dtype.hpp"
#include "revmerge/rmm.hpp"

namespace revmerge {

enum class ClassicMethod {
  linear,           ///< adapters: Σ wᵢxᵢ (PEFT `linear`); checkpoints: Σ wᵢWᵢ / Σ wᵢ (mergekit)
  task_arithmetic,  ///< base + λ Σ wᵢ δᵢ
  ties,             ///< trim to density, elect a sign per element, disjoint mean
  dare_linear,      ///< random drop with rescaling, then the weighted sum
  dare_ties,        ///< random drop with rescaling, then TIES' election and disjoint mean
  magnitude_prune,  ///< trim to density, then the weighted sum
  cat,              ///< adapters only: the factors side by side (exact, rank Σ rᵢ)
  svd,              ///< adapters only: Σ wᵢ sᵢ BᵢAᵢ exactly, re-factorised to a target rank
  slerp,            ///< full models only: spherical interpolation from the base toward one
                    ///< fine-tune by t, each tensor as one vector (mergekit's slerp)
  nearswap,         ///< full models only: each element of the base moved toward one fine-tune
                    ///< by min(1, t / |difference|) (mergekit's nearswap)
  model_stock,      ///< full models only: the base moved toward the fine-tunes' average by a
                    ///< factor from their task vectors' mean angle (mergekit's model_stock)
  breadcrumbs,      ///< full models only: each task vector without its largest γ and its
                    ///< smallest values, then the weighted sum (mergekit's breadcrumbs)
  breadcrumbs_ties, ///< breadcrumbs' trim, then TIES' sign election (no division by default)
  della,            ///< full models only: a random drop whose keep probability grows with the
                    ///< magnitude's rank in its row (density ± ε), rescaled, TIES' election
                    ///< and disjoint mean (mergekit's della)
  della_linear,     ///< DELLA's drop, rescaled, then the weighted sum
  sce,              ///< full models only: elements of high variance across the tasks, task
                    ///< weights from their mean squares, TIES' election (mergekit's sce)
  nuslerp,          ///< full models only: slerp between two models (or their task vectors) at
                    ///< t = w₂ / (w₁ + w₂), per tensor or per row (mergekit's nuslerp)
  multislerp,       ///< full models only: barycentric interpolation of n models on the sphere
                    ///< (mergekit's multislerp)
  karcher,          ///< full models only: the Karcher mean of every model's direction, scaled
                    ///< by their mean norm (mergekit's karcher)
  ram,              ///< full models only: changes made by one task kept, changes made by
                    ///< several averaged (mergekit's ram)
  ramplus_tl,       ///< ram with each task's unique changes scaled up by its share of shared
                    ///< ones (mergekit's ramplus_tl)
  arcee_fusion,     ///< full models only: the base and one fine-tune, the fine-tune's changes
                    ///< kept where their importance is an outlier (mergekit's arcee_fusion)
  passthrough,      ///< full models only: one model's tensors as they are (times a scale), for
                    ///< stacking layer slices (mergekit's passthrough)
};

/// "ties", "dare_ties", "task_arithmetic", ... ; throws usage_error listing the names.
ClassicMethod parse_classic_method(const std::string& name);
std::string to_string(ClassicMethod method);
/// Whether the method merges full models only (mergekit's methods that PEFT does not have:
/// slerp, nearswap, model_stock, breadcrumbs, della, sce and their variants).
bool full_models_only(ClassicMethod method);

/// How a method treats LoRA factors. `separate` merges the A's and the B's on their own (what
/// PEFT's linear / ties / dare_* do and what the RMM paper compares against); `combined`
/// merges the products sᵢBᵢAᵢ and re-compresses (PEFT's *_svd) or writes a full model.
enum class LoraMergeMode { separate, combined };

/// TIES' sign election: by the sum of the values (PEFT "total", mergekit "sum") or by the
/// count of signs (PEFT "frequency", mergekit "count").
enum class SignElection { sum, count };

/// A numeric parameter that varies by tensor, as mergekit configs write it: conditions tried in
/// order, the first whose `filter` is empty, "*" or a substring of the tensor's name applies.
/// Its values are one number, or a gradient of several spread evenly over the layers (layer i
/// of L sits at t = i / (L − 1); tensors outside the layers at t = 0) and interpolated linearly.
struct ParameterSetting {
  struct Condition {
    std::string filter;
    std::vector<double> values;
  };
  std::vector<Condition> conditions;

  /// The value for `tensor` at layer position t, or none where no condition applies.
  std::optional<double> at(const std::string& tensor, double t) const;
  bool is_scalar() const { return conditions.size() == 1 && conditions[0].filter.empty() && conditions[0].values.size() == 1; }
};
/// Settings by parameter name: "weight", "density", "gamma", "epsilon", "scale" (per task or for
/// all), "lambda", "t", "select_topk" (for all).
using ParameterSettings = std::map<std::string, ParameterSetting>;

/// One input of a layer slice (mergekit's `slices[].sources[]`): a model's blocks
/// [first, end), and its own parameters.
struct SliceSource {
  std::filesystem::path model;
  std::int64_t first = 0, end = 0;
  ParameterSettings parameters;
};
/// One output slice: its sources (the same number of blocks each), merged block by block with
/// the method; the slices' blocks are stacked in order.
struct LayerSlice {
  std::vector<SliceSource> sources;
  std::filesystem::path base;  ///< this slice's base (empty: the merge's)
  ParameterSettings parameters;
};

/// mergekit's `MODEL+LORA`: a model folder with a PEFT LoRA adapter merged into it.
struct ModelWithLora {
  std::filesystem::path model, adapter;
};

struct ClassicMergeOptions {
  ClassicMethod method = ClassicMethod::task_arithmetic;
  LoraMergeMode mode = LoraMergeMode::separate;
  /// PEFT adapter folders, or Hugging Face model folders (full fine-tunes); not mixed.
  std::vector<TaskSource> tasks;
  std::vector<double> weights;    ///< one per task, or empty for all 1
  std::vector<double> densities;  ///< one per task, or one for all, or empty for 1 (no pruning)
  /// breadcrumbs: the fraction of largest magnitudes dropped as outliers (one, one per task, or
  /// empty for mergekit's 0.01)
  std::vector<double> gammas;
  /// della: the spread of the keep probability around the density (one, one per task, or empty
  /// for mergekit's 0.15); density ± ε must lie inside (0, 1)
  std::vector<double> epsilons;
  /// sce: the fraction of elements kept by their variance across the tasks (default 1: all)
  std::optional<double> select_topk;
  /// nuslerp: the whole tensor as one vector (default), or else vectors along the last axis —
  /// along the first with nuslerp_row_wise (mergekit's names and defaults)
  std::optional<bool> nuslerp_flatten, nuslerp_row_wise;
  std::optional<double> eps;           ///< multislerp: the norm guard (default 1e-8)
  std::optional<bool> filter_wise;     ///< model_stock: an angle per row (default: per tensor)
  std::optional<double> tol;           ///< karcher: convergence tolerance (default 1e-5)
  std::optional<std::int64_t> max_iter;  ///< karcher: most iterations (default 10)
  /// ramplus_tl: the boost r of unique changes (default 0.1) and its cap α (default 0.2); ram's
  /// and ramplus_tl's threshold ε comes from `epsilons` (one value, default 1e-5)
  std::optional<double> ram_r, ram_alpha;
  /// Parameters set per tensor (mergekit's gradients and filters): for all tasks, and per task
  /// (empty, or one map per task, which takes precedence). A parameter named here replaces the
  /// option of the same name for every tensor; where no condition applies, the method's default.
  ParameterSettings tensor_parameters;
  std::vector<ParameterSettings> task_tensor_parameters;
  /// Layer stacking (mergekit's `slices`): the output's blocks from these slices, in order,
  /// instead of `tasks`; embeddings come from the first slice's sources, the final norm and the
  /// head from the last one's.
  std::vector<LayerSlice> slices;
  /// mergekit's MODEL+LORA inputs: an input path (a task's, the base, a slice's source or base,
  /// tokenizer_source) that is a key here stands for that model with the adapter merged into it
  /// (W + scale·B·A per adapted module, as PEFT's merge_and_unload). Each is written once before
  /// the merge into a folder beside `out` (OUT.lora-applied, removed after it), its adapted
  /// tensors in f32 so that the adapter's delta is not rounded into a 16-bit weight.
  std::map<std::filesystem::path, ModelWithLora> with_lora;
  /// Inputs written for this merge (the MODEL+LORA models, by the folder written): the recipe and
  /// the model card name each by what it was made from, not by its passing folder.
  std::map<std::filesystem::path, ModelWithLora> input_origins;
  /// passthrough: each model's tensors multiplied by this (default: as they are)
  std::vector<double> scales;
  /// Full models: the folder whose tokenizer files the output gets (empty: the base's, or the
  /// first model's without a base) — mergekit's tokenizer_source; its vocabulary must be the
  /// base's (revmerge does not remap embeddings)
  std::filesystem::path tokenizer_source;
  /// Full models: the chat template written into the output's tokenizer (a Jinja text, or
  /// "auto": the one most of the inputs carry) — mergekit's chat_template
  std::optional<std::string> chat_template;
  std::optional<double> lambda;   ///< final scale of the merged delta (default 1)
  /// slerp: 0 gives the base, 1 the fine-tune; nearswap: the difference below which an
  /// element takes the fine-tune's value (required by both)
  std::optional<double> t;
  SignElection election = SignElection::sum;
  /// divide by the agreeing tasks / weights (method default); multislerp: weights summing to 1
  std::optional<bool> normalize;
  std::optional<bool> rescale;    ///< DARE's rescaling after the drop (default on)
  std::uint64_t seed = 0;         ///< DARE's mask (counter-based, see docs/methods.md)
  std::int64_t rank = 0;          ///< svd / combined → adapter: target rank, 0 = largest input
  std::filesystem::path base;     ///< base model: needed by checkpoints and by full_model
  bool full_model = false;        ///< adapters: write base + merged delta as a full model
  std::filesystem::path out;
  std::optional<DType> dtype;     ///< output dtype (default f32 adapters, base's dtype models)
  bool overwrite = false;
  bool allow_nonfinite = false;
  int threads = 0;
  /// Where full models merge: on the CPU, or (Device::cuda) on GPU `gpu` — the element-wise
  /// methods but della and sce in this version, the bytes the CPU writes. `automatic` is the
  /// CPU here.
  Device device = Device::cpu;
  int gpu = 0;
  /// Full models: the memory a merge may hold (0: half of what is available); tensors are
  /// merged in pieces that fit it (--memory-budget).
  std::uint64_t memory_budget = 0;
  /// Full models: the largest safetensors shard written (transformers' and mergekit's default,
  /// 5 GB); a tensor larger than it is a shard of its own.
  std::uint64_t max_shard_bytes = 5'000'000'000ull;
  ProgressFn progress;
  OutputRecipe recipe;            ///< the command / config recorded in the output's recipe
  /// The workers the merge is split across (as RmmMergeOptions::peers): full models and layer
  /// slices by the output's tensors, each worker merging a contiguous share into the one
  /// output's shards; adapters by modules, the merged factors exchanged and worker 0 writing the
  /// adapter. The same bytes as one worker.
  Peers* peers = nullptr;
  /// A model output under several workers: no shard holds two workers' tensors (ModelOutputOptions).
  bool shard_per_rank = false;
};

/// What a classic merge wrote.
struct ClassicMergeReport {
  std::string method, mode;  ///< mode: "separate", "combined" or "checkpoint"
  std::string convention;    ///< "peft" (adapters) or "mergekit" (checkpoints)
  std::string output;        ///< "adapter" or "model"
  std::int64_t items = 0;    ///< modules (adapters) or tensors (checkpoints) merged
  std::int64_t rank = 0;     ///< rank of a written adapter (largest over modules)
  /// Every parameter the merge ran with, defaults included ("density", "1 (not given: nothing
  /// trimmed)"), in a fixed order; the output's recipe records the same.
  std::vector<std::pair<std::string, std::string>> parameters;
  /// What the user may not expect: tasks naming different base models, modules merged as zero
  /// deltas in tasks that do not adapt them.
  std::vector<std::string> warnings;
};

/// Merges the tasks into one adapter or model at `options.out`; nothing is written unless the
/// whole merge succeeds. Throws usage_error (options that do not fit the method or the inputs),
/// io_error / format_error / unsupported_error (inputs, naming folder and tensor), shape_error
/// (tasks for different bases, ranks the separate mode cannot pair).
ClassicMergeReport merge_classic(const ClassicMergeOptions& options);

}  // namespace revmerge
