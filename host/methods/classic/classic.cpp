// Entry point of the classic methods: names, per-task parameters, and the choice between the
// adapter driver and the checkpoint driver from what the input folders hold.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "core/atomic_output.hpp"
#include "methods/classic/combine.hpp"
#include "distributed/agreement.hpp"
#include "methods/classic/classic_internal.hpp"
#include "methods/recipe.hpp"
#include "methods/adapter_set.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"

namespace fs = std::filesystem;

namespace revmerge {
namespace {

constexpr std::pair<ClassicMethod, const char*> kNames[] = {
    {ClassicMethod::linear, "linear"},
    {ClassicMethod::task_arithmetic, "task_arithmetic"},
    {ClassicMethod::ties, "ties"},
    {ClassicMethod::dare_linear, "dare_linear"},
    {ClassicMethod::dare_ties, "dare_ties"},
    {ClassicMethod::magnitude_prune, "magnitude_prune"},
    {ClassicMethod::cat, "cat"},
    {ClassicMethod::svd, "svd"},
    {ClassicMethod::slerp, "slerp"},
    {ClassicMethod::nearswap, "nearswap"},
    {ClassicMethod::model_stock, "model_stock"},
    {ClassicMethod::breadcrumbs, "breadcrumbs"},
    {ClassicMethod::breadcrumbs_ties, "breadcrumbs_ties"},
    {ClassicMethod::della, "della"},
    {ClassicMethod::della_linear, "della_linear"},
    {ClassicMethod::sce, "sce"},
    {ClassicMethod::nuslerp, "nuslerp"},
    {ClassicMethod::multislerp, "multislerp"},
    {ClassicMethod::karcher, "karcher"},
    {ClassicMethod::ram, "ram"},
    {ClassicMethod::ramplus_tl, "ramplus_tl"},
    {ClassicMethod::arcee_fusion, "arcee_fusion"},
    {ClassicMethod::passthrough, "passthrough"},
};

}  // namespace

ClassicMethod parse_classic_method(const std::string& name) {
  for (const auto& [m, n] : kNames)
    if (name == n) return m;
  std::string all = "rmm";
  for (const auto& [m, n] : kNames) all += std::string(", ") + n;
  throw usage_error("--method: unknown method '" + name + "' (available: " + all + ")");
}

std::string to_string(ClassicMethod method) {
  for (const auto& [m, n] : kNames)
    if (m == method) return n;
  return "?";
}

bool is_elementwise(ClassicMethod method) {
  return method != ClassicMethod::cat && method != ClassicMethod::svd &&
         !blends_two_models(method) && method != ClassicMethod::model_stock && !is_spherical(method) &&
         !is_selective(method) && method != ClassicMethod::passthrough;
}

bool full_models_only(ClassicMethod method) {
  switch (method) {
    case ClassicMethod::slerp:
    case ClassicMethod::nearswap:
    case ClassicMethod::model_stock:
    case ClassicMethod::breadcrumbs:
    case ClassicMethod::breadcrumbs_ties:
    case ClassicMethod::della:
    case ClassicMethod::della_linear:
    case ClassicMethod::sce:
    case ClassicMethod::nuslerp:
    case ClassicMethod::multislerp:
    case ClassicMethod::karcher:
    case ClassicMethod::ram:
    case ClassicMethod::ramplus_tl:
    case ClassicMethod::arcee_fusion:
    case ClassicMethod::passthrough:
      return true;
    default:
      return false;
  }
}

bool prunes(ClassicMethod m) {
  return m == ClassicMethod::ties || m == ClassicMethod::dare_ties || m == ClassicMethod::dare_linear ||
         m == ClassicMethod::magnitude_prune || m == ClassicMethod::breadcrumbs ||
         m == ClassicMethod::breadcrumbs_ties || m == ClassicMethod::della ||
         m == ClassicMethod::della_linear;
}

void refuse_weighting_options(const ClassicMergeOptions& o) {
  for (const auto& [given, name] : {std::pair{!o.weights.empty(), "--weights"},
                                    std::pair{o.lambda.has_value(), "--lambda"},
                                    std::pair{o.normalize.has_value(), "--normalize"},
                                    std::pair{o.rescale.has_value(), "--rescale"}})
    if (given)
      throw usage_error(std::string(name) + ": not an option of --method " + to_string(o.method) +
                        (blends_two_models(o.method) ? " (it takes --t)"
                         : o.method == ClassicMethod::sce ? " (it weighs the tasks by their mean squares)"
                                                          : ""));
}

namespace {

// One value for all tasks, one per task, or the default for all.
std::vector<double> per_task_values(const std::vector<double>& given, std::size_t n, double fallback,
                                    const char* option, const char* plural) {
  std::vector<double> v = given.empty() ? std::vector<double>(n, fallback)
                          : given.size() == 1 ? std::vector<double>(n, given[0])
                                              : given;
  if (v.size() != n)
    throw usage_error(std::string(option) + ": " + std::to_string(given.size()) + " " + plural +
                      " for " + std::to_string(n) + " tasks (give one, or one per task)");
  return v;
}

}  // namespace

bool blends_two_models(ClassicMethod method) {
  return method == ClassicMethod::slerp || method == ClassicMethod::nearswap;
}

TaskParameters task_parameters(const ClassicMergeOptions& o, std::size_t n) {
  TaskParameters p;
  p.weights = o.weights.empty() ? std::vector<double>(n, 1.0) : o.weights;
  if (p.weights.size() != n)
    throw usage_error("--weights: " + std::to_string(p.weights.size()) + " weights for " +
                      std::to_string(n) + " tasks (give one per task, in order)");
  p.densities = per_task_values(o.densities, n, 1.0, "--density", "densities");
  p.gammas = per_task_values(o.gammas, n, 0.01, "--gamma", "gammas");
  const bool ram = o.method == ClassicMethod::ram || o.method == ClassicMethod::ramplus_tl;
  p.epsilons = per_task_values(o.epsilons, n, ram ? 1e-5 : 0.15, "--epsilon", "epsilons");
  p.scales = per_task_values(o.scales, n, 1.0, "--scale", "scales");
  const bool della = o.method == ClassicMethod::della || o.method == ClassicMethod::della_linear;
  for (std::size_t t = 0; t < n; ++t) {
    const auto& name = o.tasks[t].name;
    if (!std::isfinite(p.weights[t]))
      throw usage_error("--weights: the weight of task '" + name + "' is not finite");
    if (!std::isfinite(p.scales[t]))
      throw usage_error("--scale: the scale of task '" + name + "' is not finite");
    if (!(p.densities[t] >= 0 && p.densities[t] <= 1))
      throw usage_error("--density: " + fmt::format("{}", p.densities[t]) + " for task '" + name +
                        "' is outside [0, 1] (the fraction of each tensor that is kept)");
    if (!(p.gammas[t] >= 0 && p.gammas[t] <= 1))
      throw usage_error("--gamma: " + fmt::format("{}", p.gammas[t]) + " for task '" + name +
                        "' is outside [0, 1] (the fraction of largest magnitudes dropped)");
    const double d = p.densities[t], e = p.epsilons[t];
    if (!std::isfinite(e))
      throw usage_error("--epsilon: the epsilon of task '" + name + "' is not finite");
    if (della && d > 0 && d < 1 && !(d - e > 0 && d + e < 1))
      throw usage_error(fmt::format("--epsilon: {} for task '{}' with density {}: DELLA's keep "
                                    "probabilities density ± epsilon must lie inside (0, 1)",
                                    e, name, d));
  }
  return p;
}

namespace {

std::string number_list(const std::vector<double>& v) {
  if (std::all_of(v.begin(), v.end(), [&](double x) { return x == v.front(); }))
    return fmt::format("{}", v.front()) + (v.size() > 1 ? " each" : "");
  return fmt::format("{}", fmt::join(v, ", "));
}

}  // namespace

namespace {

// What an input was made from, where it was written for this merge (ClassicMergeOptions::input_origins).
std::filesystem::path origin_of(const ClassicMergeOptions& o, const std::filesystem::path& input) {
  const auto it = o.input_origins.find(input);
  if (it == o.input_origins.end()) return input;
  const auto whole = [](const std::filesystem::path& p) { return std::filesystem::absolute(p).lexically_normal().string(); };
  return whole(it->second.model) + "+" + whole(it->second.adapter);
}

// An input's short name (a folder's, or mergekit's MODEL+LORA of the two folders' names).
std::string short_name_of(const ClassicMergeOptions& o, const std::filesystem::path& input) {
  const auto name = [](const std::filesystem::path& p) {
    const auto n = std::filesystem::absolute(p).lexically_normal();
    return (n.has_filename() ? n.filename() : n.parent_path().filename()).string();
  };
  const auto it = o.input_origins.find(input);
  return it == o.input_origins.end() ? name(input) : name(it->second.model) + "+" + name(it->second.adapter);
}

std::vector<std::pair<std::string, std::string>> plain_parameters(const ClassicMergeOptions& o,
                                                                  const TaskParameters& p,
                                                                  const CombineRecipe* r,
                                                                  std::int64_t rank,
                                                                  const std::string& dtype) {
  std::vector<std::pair<std::string, std::string>> out;
  const auto unless = [](bool given, const char* what) { return given ? std::string() : std::string(" (") + what + ")"; };
  if (is_spherical(o.method)) {
    if (o.method != ClassicMethod::karcher)
      out.emplace_back("weights", number_list(p.weights) + unless(!o.weights.empty(), "not given"));
    if (o.method == ClassicMethod::nuslerp) {
      out.emplace_back("nuslerp_flatten", fmt::format("{}", o.nuslerp_flatten.value_or(true)) +
                                              unless(o.nuslerp_flatten.has_value(), "not given"));
      out.emplace_back("nuslerp_row_wise", fmt::format("{}", o.nuslerp_row_wise.value_or(false)) +
                                               unless(o.nuslerp_row_wise.has_value(), "not given"));
    }
    if (o.method == ClassicMethod::multislerp) {
      out.emplace_back("normalize_weights", fmt::format("{}", o.normalize.value_or(true)) +
                                                unless(o.normalize.has_value(), "not given"));
      out.emplace_back("eps", fmt::format("{}", o.eps.value_or(1e-8)) + unless(o.eps.has_value(), "not given"));
    }
    if (o.method == ClassicMethod::karcher) {
      out.emplace_back("max_iter", fmt::format("{}", o.max_iter.value_or(10)) + unless(o.max_iter.has_value(), "not given"));
      out.emplace_back("tol", fmt::format("{}", o.tol.value_or(1e-5)) + unless(o.tol.has_value(), "not given"));
    }
  }
  if (o.method == ClassicMethod::ram || o.method == ClassicMethod::ramplus_tl) {
    out.emplace_back("epsilon", fmt::format("{}", p.epsilons.empty() ? 1e-5 : p.epsilons[0]) +
                                    unless(!o.epsilons.empty(), "not given"));
    if (o.method == ClassicMethod::ramplus_tl) {
      out.emplace_back("r", fmt::format("{}", o.ram_r.value_or(0.1)) + unless(o.ram_r.has_value(), "not given"));
      out.emplace_back("alpha", fmt::format("{}", o.ram_alpha.value_or(0.2)) +
                                    unless(o.ram_alpha.has_value(), "not given"));
    }
  }
  if (full_models_only(o.method) && !is_elementwise(o.method)) {
    if (o.t) out.emplace_back("t", fmt::format("{}", *o.t));
    out.emplace_back("dtype", dtype + unless(o.dtype.has_value(), "not given"));
    if (!o.base.empty()) out.emplace_back("base", origin_of(o, o.base).string());
    else if (is_spherical(o.method)) out.emplace_back("base", "none (the models themselves are interpolated)");
    return out;
  }
  if (r && r->select_by_variance) {
    out.emplace_back("select_topk", fmt::format("{}", o.select_topk.value_or(1.0)) +
                                        unless(o.select_topk.has_value(), "not given: every element"));
    out.emplace_back("weights", "from each task's mean square (SCE)");
    out.emplace_back("dtype", dtype + unless(o.dtype.has_value(), "not given"));
    out.emplace_back("base", origin_of(o, o.base).string());
    return out;
  }
  out.emplace_back("weights", number_list(p.weights) + unless(!o.weights.empty(), "not given"));
  const bool drops = r && (r->sparsify == Sparsify::random || r->sparsify == Sparsify::della);
  if (r && r->sparsify != Sparsify::none)
    out.emplace_back("density", number_list(p.densities) +
                                    unless(!o.densities.empty(), drops ? "not given: nothing dropped"
                                                                       : "not given: nothing trimmed"));
  if (r && r->sparsify == Sparsify::outliers)
    out.emplace_back("gamma", number_list(p.gammas) + unless(!o.gammas.empty(), "not given"));
  if (r && r->sparsify == Sparsify::della)
    out.emplace_back("epsilon", number_list(p.epsilons) + unless(!o.epsilons.empty(), "not given"));
  out.emplace_back("lambda", fmt::format("{}", o.lambda.value_or(1.0)) + unless(o.lambda.has_value(), "not given"));
  if (r && r->elect_sign)
    out.emplace_back("majority_sign", r->election == SignElection::sum ? "total (sum)" : "frequency (count)");
  if (r) {
    const char* how = r->normalize == Normalize::none             ? "no"
                      : r->normalize == Normalize::weight_sum     ? "by the sum of the weights"
                      : r->normalize == Normalize::agreeing_count ? "by the count of agreeing tasks"
                                                                  : "by the weights of agreeing tasks";
    out.emplace_back("normalize", how + unless(o.normalize.has_value(), "the method's default"));
  }
  // Every sparsification of mergekit's can be rescaled; of PEFT's, DARE's drop only.
  if (r && r->sparsify != Sparsify::none &&
      (r->convention == Convention::mergekit || r->sparsify == Sparsify::random))
    out.emplace_back("rescale", std::string(r->rescale == Rescale::none             ? "no"
                                            : r->rescale == Rescale::inverse_density ? "by 1 / density"
                                                                                     : "to the L1 norm") +
                                    unless(o.rescale.has_value(), "the method's default"));
  if (drops) out.emplace_back("seed", std::to_string(o.seed));
  if (rank > 0) out.emplace_back("rank", std::to_string(rank) + unless(o.rank > 0, "not given: the largest input rank"));
  out.emplace_back("dtype", dtype + unless(o.dtype.has_value(), "not given"));
  if (!o.base.empty()) out.emplace_back("base", origin_of(o, o.base).string());
  return out;
}

// "[0, 0.5, 1] over the layers where 'self_attn'; 0.3 elsewhere"
std::string describe(const ParameterSetting& s) {
  std::vector<std::string> parts;
  for (const auto& c : s.conditions) {
    auto v = c.values.size() == 1 ? fmt::format("{}", c.values[0])
                                  : fmt::format("[{}] over the layers", fmt::join(c.values, ", "));
    parts.push_back(c.filter.empty() || c.filter == "*" ? v + (parts.empty() ? "" : " elsewhere")
                                                        : v + " where '" + c.filter + "'");
  }
  return fmt::format("{}", fmt::join(parts, "; "));
}

}  // namespace

std::vector<std::pair<std::string, std::string>> classic_parameters(const ClassicMergeOptions& o,
                                                                    const TaskParameters& p,
                                                                    const CombineRecipe* r,
                                                                    std::int64_t rank,
                                                                    const std::string& dtype) {
  auto out = plain_parameters(o, p, r, rank, dtype);
  // Parameters the config sets per tensor: what it says, not one value.
  for (const auto& [shown, key] : {std::pair{"weights", "weight"}, std::pair{"density", "density"},
                                   std::pair{"gamma", "gamma"}, std::pair{"epsilon", "epsilon"},
                                   std::pair{"lambda", "lambda"}, std::pair{"t", "t"},
                                   std::pair{"select_topk", "select_topk"}}) {
    if (!is_set_per_tensor(o, key)) continue;
    const auto it = o.tensor_parameters.find(key);
    bool per_task = false;
    for (const auto& s : o.task_tensor_parameters) per_task = per_task || s.count(key) > 0;
    const auto text = std::string("per tensor: ") +
                      (it != o.tensor_parameters.end() ? describe(it->second) : std::string()) +
                      (per_task ? std::string(it != o.tensor_parameters.end() ? "; " : "") +
                                      "per task as the config sets it"
                                : std::string());
    auto at = std::find_if(out.begin(), out.end(), [&](const auto& kv) { return kv.first == shown; });
    if (at != out.end()) at->second = text;
    else out.insert(out.begin(), {shown, text});
  }
  return out;
}

void check_options_fit_method(const ClassicMergeOptions& o) {
  if (!prunes(o.method) && (!o.densities.empty() || is_set_per_tensor(o, "density")))
    throw usage_error("--density: --method " + to_string(o.method) + " does not prune");
  const auto only = [&](bool given, bool fits, const char* option, const char* methods) {
    if (given && !fits)
      throw usage_error(std::string(option) + ": an option of --method " + methods + " only");
  };
  only(!o.gammas.empty() || is_set_per_tensor(o, "gamma"), o.method == ClassicMethod::breadcrumbs || o.method == ClassicMethod::breadcrumbs_ties,
       "--gamma", "breadcrumbs and breadcrumbs_ties");
  only(!o.epsilons.empty() || is_set_per_tensor(o, "epsilon"), o.method == ClassicMethod::della || o.method == ClassicMethod::della_linear ||
                                o.method == ClassicMethod::ram || o.method == ClassicMethod::ramplus_tl,
       "--epsilon", "della, della_linear, ram and ramplus_tl");
  only(o.ram_r.has_value() || o.ram_alpha.has_value(), o.method == ClassicMethod::ramplus_tl,
       "--ram-r / --ram-alpha", "ramplus_tl");
  only(!o.scales.empty() || is_set_per_tensor(o, "scale"), o.method == ClassicMethod::passthrough,
       "--scale", "passthrough");
  only(o.select_topk.has_value() || is_set_per_tensor(o, "select_topk"), o.method == ClassicMethod::sce, "--select-topk", "sce");
  if (o.select_topk && !(*o.select_topk >= 0 && *o.select_topk <= 1))
    throw usage_error(fmt::format("--select-topk: {} is outside [0, 1] (the fraction of elements "
                                  "kept by their variance across the tasks)", *o.select_topk));
  if (o.method == ClassicMethod::sce) refuse_weighting_options(o);
  only(o.nuslerp_flatten.has_value() || o.nuslerp_row_wise.has_value(),
       o.method == ClassicMethod::nuslerp, "--no-flatten / --row-wise", "nuslerp");
  only(o.eps.has_value(), o.method == ClassicMethod::multislerp, "--eps", "multislerp");
  only(o.filter_wise.has_value(), o.method == ClassicMethod::model_stock, "--filter-wise", "model_stock");
  only(o.tol.has_value() || o.max_iter.has_value(), o.method == ClassicMethod::karcher,
       "--tol / --max-iter", "karcher");
  if ((o.t || is_set_per_tensor(o, "t")) && !blends_two_models(o.method))
    throw usage_error("--t: an option of --method slerp and nearswap only");
}

namespace {

// Every folder the merge reads: none may be the output that overwrite replaces.
std::vector<fs::path> input_paths(const ClassicMergeOptions& o) {
  auto in = task_folders(o.tasks);
  in.push_back(o.base);
  in.push_back(o.tokenizer_source);
  for (const auto& slice : o.slices) {
    in.push_back(slice.base);
    for (const auto& source : slice.sources) in.push_back(source.model);
  }
  for (const auto& [given, w] : o.with_lora) in.push_back(w.model), in.push_back(w.adapter);
  return in;
}

}  // namespace

ClassicMergeReport merge_classic(const ClassicMergeOptions& o) {
  if (!o.slices.empty() && !o.tasks.empty())
    throw usage_error("layer slices name their models; give no other inputs");
  if (o.tasks.empty() && o.slices.empty()) throw usage_error("no tasks to merge");
  if (o.out.empty()) throw usage_error("--out: no output folder given");
  if (o.overwrite) refuse_replacing_inputs(o.out, input_paths(o));
  if (!o.with_lora.empty()) return merge_with_loras_applied(o);
  if (o.allow_nonfinite)
    throw usage_error("--allow-nonfinite applies to --method rmm only; the classic methods "
                      "refuse NaN and Inf inputs");
  check_task_names(o.tasks);
  check_options_fit_method(o);
  if (!o.slices.empty()) return merge_classic_checkpoints(o);
  std::size_t adapters = 0;
  for (const auto& t : o.tasks) {
    if (!fs::is_directory(t.adapter))
      throw io_error(t.adapter.string() + ": no such folder (task '" + t.name + "')");
    adapters += fs::exists(t.adapter / kAdapterConfigName);
  }
  if (adapters == o.tasks.size()) {
    if (!o.tokenizer_source.empty() || o.chat_template)
      throw usage_error("tokenizer_source, chat_template: they apply to a merged full model; the "
                        "inputs are LoRA adapters");
    if (has_tensor_parameters(o))
      throw usage_error("per-tensor parameters (a config's gradients and filters) apply to full "
                        "models; the inputs are LoRA adapters");
    if (!o.full_model && o.max_shard_bytes != ClassicMergeOptions{}.max_shard_bytes)
      throw usage_error("--out-shard-size: the shards of a model output; these LoRA adapters merge "
                        "into an adapter (--full-model writes a model)");
    if (o.device == Device::cuda)
      throw usage_error("--device cuda: merges of LoRA adapters by --method " + to_string(o.method) +
                        " run on the CPU in this version (an adapter's factors are small; RMM runs on the GPU)");
    return merge_classic_adapters(o);
  }
  if (adapters == 0) return merge_classic_checkpoints(o);
  throw usage_error("the inputs mix PEFT adapters and full models; merge one kind at a time");
}

namespace {

RecipeRecord classic_record(const ClassicMergeOptions& o, const ClassicMergeReport& report) {
  RecipeRecord record{report.method, {{"mode", report.mode}}, recipe_inputs(o.tasks)};
  for (std::size_t s = 0; s < o.slices.size(); ++s)  // layer slices: their sources are the inputs
    for (std::size_t i = 0; i < o.slices[s].sources.size(); ++i)
      record.inputs.emplace_back(fmt::format("slices[{}].sources[{}]", s, i), o.slices[s].sources[i].model);
  for (auto& [name, path] : record.inputs) path = origin_of(o, path);
  record.parameters.insert(record.parameters.end(), report.parameters.begin(), report.parameters.end());
  return record;
}

}  // namespace

std::pair<std::string, std::string> classic_recipe_file(const ClassicMergeOptions& o,
                                                        const ClassicMergeReport& report) {
  return recipe_file(o.recipe, classic_record(o, report));
}

std::pair<std::string, std::string> classic_model_card(const ClassicMergeOptions& o,
                                                       const ClassicMergeReport& report) {
  return model_card(o.recipe, classic_record(o, report), origin_of(o, o.base),
                    o.base.empty() ? std::string() : short_name_of(o, o.base));
}

}  // namespace revmerge
