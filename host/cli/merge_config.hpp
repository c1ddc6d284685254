#pragma once
// The merge config file (YAML or JSON). Two spellings are accepted:
//  - revmerge's own: method, basis, dtype, out, tasks: [{name, adapter}], and the options of
//    the classic methods (weights via tasks[].weight, density, lambda, ...);
//  - mergekit's: merge_method, base_model, models: [{model, parameters: {weight, density}}],
//    parameters: {...}, dtype, out_dtype — for the methods both tools share.
// Relative paths are resolved against the config file's folder. Unknown keys are errors.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "revmerge/classic.hpp"
#include "revmerge/rmm.hpp"

namespace revmerge::cli {

struct MergeConfig {
  std::string file;  ///< the config file as given (empty without one), for messages
  std::string text;  ///< its text as read (kept in the output's recipe)
  std::optional<std::string> method;
  std::optional<std::int64_t> basis;
  std::optional<std::string> dtype;
  std::optional<std::filesystem::path> out, base;
  std::vector<TaskSource> tasks;
  /// one per task
  std::vector<std::optional<double>> task_weights, task_densities, task_gammas, task_epsilons;
  std::optional<double> weight, density, gamma, epsilon, scale, lambda;  ///< defaults for every task
  std::optional<double> select_topk;                              ///< SCE's selection
  std::optional<bool> nuslerp_flatten, nuslerp_row_wise, normalize_weights, filter_wise;
  std::optional<double> eps, tol, ram_r, ram_alpha;
  std::optional<std::int64_t> max_iter;
  /// mergekit's per-tensor values (gradients, filters) of numeric parameters: for all tasks and
  /// per task (one map per task). Where a parameter varies anywhere, all its values, plain ones
  /// too, are here (so a model's own value still outranks the config's), not in the fields above.
  ParameterSettings tensor_parameters;
  std::vector<ParameterSettings> task_tensor_parameters;
  std::vector<std::optional<double>> task_scales;  ///< passthrough, one per task
  std::vector<LayerSlice> slices;                  ///< mergekit's layer slices (instead of models)
  /// mergekit's tokenizer_source ("base" or a model folder, resolved) and chat_template
  std::optional<std::string> tokenizer_source, chat_template;
  std::optional<double> t;                        ///< slerp's interpolation parameter
  std::optional<bool> normalize, rescale;
  std::optional<std::string> majority_sign, mode;
  std::optional<std::int64_t> rank, seed;
  /// --method auto / rank: the storage budget as written ("0.25", "25%", "2GiB") or the bound
  std::optional<std::string> storage;
  std::optional<double> max_error;
  std::optional<std::string> objective;  ///< "mean" or "max"
  /// mergekit's MODEL+LORA references: the path that names each (as tasks, base, slices and
  /// tokenizer_source hold it) and what it is made of
  std::map<std::filesystem::path, ModelWithLora> with_lora;
};

/// Reads `path`; unknown keys, missing names or models, and wrong types are format_errors
/// naming the file and the key; mergekit features revmerge does not have are
/// unsupported_errors naming them.
/// A config over 1 MiB, nested more than 10 levels or holding more than 200000 values (aliases
/// counted at each use) is refused as not a merge config.
/// One config per YAML document: a file of several is a mergekit-mega config, each document a
/// merge into its `out_path` (or `out`); a path another document writes is taken to exist, and
/// messages name the document ("FILE (document 2 of 3): ...").
std::vector<MergeConfig> read_merge_configs(const std::filesystem::path& path);
/// The same for a config's text; `path` names it in messages and anchors relative paths.
std::vector<MergeConfig> parse_merge_configs(const std::string& text, const std::filesystem::path& path);
/// A config of one document (format_error for several).
MergeConfig parse_merge_config(const std::string& text, const std::filesystem::path& path);

/// mergekit's MODEL+LORA: `text` split at its one '+' into a model and a LoRA adapter, each
/// resolved against `dir` (nullopt without exactly one '+'; neither part is checked).
std::optional<ModelWithLora> model_with_lora_parts(const std::string& text, const std::filesystem::path& dir);
/// A MODEL+LORA task's name: the model's folder name, '+', the adapter's.
std::string model_with_lora_name(const ModelWithLora& w);

/// Task name for an adapter given on the command line: its folder's name.
std::string task_name_from_path(const std::filesystem::path& adapter);

/// A task given on the command line: `PATH` (named after its folder) or `NAME=PATH` (a path
/// that exists as written is always a path, even with an '=' in it).
TaskSource task_from_argument(const std::string& argument);

}  // namespace revmerge::cli
