// `revmerge merge`, one merge: RMM of LoRA adapters into a reversible bundle, the budgeted store,
// or a classic method (task arithmetic, TIES, DARE, ...) into one adapter or model. Its command
// line is merge_command.cpp's; a config of several merges, merge_documents.cpp's.

#include <fmt/format.h>

#include "bundle_report.hpp"
#include "core/memory_info.hpp"
#include "progress.hpp"
#include "command_line.hpp"
#include "merge_args.hpp"
#include "merge_config.hpp"
#include "output_checks.hpp"
#include "backend/registry.hpp"
#include "core/atomic_output.hpp"
#include "methods/lowrank/left_out.hpp"
#include "revmerge/classic.hpp"
#include "revmerge/devices.hpp"
#include "revmerge/error.hpp"
#include "revmerge/hf_model.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/store.hpp"
#include "run.hpp"
#include "text_format.hpp"

#include <algorithm>
#include <functional>
#include <iomanip>
#include <iostream>
#include <mutex>
#include <set>

namespace revmerge::cli {
namespace {

std::filesystem::path output_folder(const MergeArgs& args, const MergeConfig& cfg) {
  if (args.given("--out")) return args.out;
  if (cfg.out) return *cfg.out;
  throw usage_error("--out: required (the folder to create)");
}

// Options the classic methods take and the bundle methods refuse.
constexpr const char* kClassicOnly[] = {
    "--weights", "--density", "--gamma", "--epsilon", "--select-topk", "--no-flatten", "--row-wise",
    "--eps", "--tol", "--max-iter", "--ram-r", "--ram-alpha", "--scale", "--filter-wise",
    "--lambda", "--t", "--mode", "--majority-sign", "--normalize", "--no-normalize", "--rescale",
    "--no-rescale", "--seed", "--full-model", "--out-shard-size"};

// The output dtype: --dtype, else the config's, else none (the method's default).
std::optional<DType> output_dtype(const MergeArgs& args, const MergeConfig& cfg) {
  if (!args.given("--dtype") && !cfg.dtype) return std::nullopt;
  return parse_float_dtype_option(args.given("--dtype") ? args.dtype : *cfg.dtype,
                                  args.given("--dtype") ? "--dtype" : cfg.file + ": 'dtype'");
}

void report_bundle(const MergeArgs& args, const BundleManifest& manifest, const std::filesystem::path& out) {
  for (const auto& w : bundle_warnings(manifest)) print_warning(w);
  if (args.json)
    report_out() << bundle_report_json(manifest, out.string()).dump(1) << "\n";
  else if (!args.quiet)
    print_bundle_report(manifest, out.string(), 5);
}

// What a bundle of full fine-tunes cannot carry: each fine-tune's tensors outside the base's
// linear modules where it differs from the base (`revert --full` gives the base's there).
void warn_of_tensors_left_out(const FullModelInputs& in, const std::vector<TaskSource>& tasks) {
  const HfModel base(in.base);
  std::set<std::string> carried;
  for (const auto& w : base.linears()) carried.insert(w.tensor);
  for (const auto& t : tasks)
    if (const auto left = changed_tensors_left_out(base, HfModel(t.adapter), carried, "merge"); !left.empty())
      print_warning(fmt::format("task '{}': the bundle does not carry {} where {} differs from the base "
                                "(a bundle holds the blocks' linear modules): `revert --full` gives the "
                                "base's there", t.name, describe_left_out(left), t.adapter.string()));
}

// What a merge of adapters cannot carry: tensors an adapter keeps whole (PEFT's modules_to_save,
// e.g. `compress --save-changed`'s embeddings and norms); the bundle or merged adapter holds the
// LoRA factors only.
void warn_of_modules_kept_whole(const std::vector<TaskSource>& tasks, const char* output) {
  for (const auto& t : tasks) {
    if (!std::filesystem::exists(t.adapter / kAdapterConfigName)) continue;  // a full model
    const PeftAdapter a(t.adapter);
    const auto& kept = a.saved_module_tensors();
    if (kept.empty()) continue;
    print_warning(fmt::format("task '{}': {} keeps {} tensor{} whole (modules_to_save: {}{}); the {} "
                              "holds its LoRA factors only, so they are not carried",
                              t.name, t.adapter.string(), kept.size(), kept.size() == 1 ? "" : "s",
                              kept.front(), kept.size() > 1 ? ", …" : "", output));
  }
}

// Whether the inputs are full fine-tunes (model folders: a config.json, no adapter_config.json)
// rather than PEFT adapters; a mix of the two is refused.
bool full_models(const std::vector<TaskSource>& tasks) {
  std::size_t models = 0;
  for (const auto& t : tasks)
    models += !std::filesystem::exists(t.adapter / kAdapterConfigName) &&
              std::filesystem::exists(t.adapter / "config.json");
  if (models != 0 && models != tasks.size())
    throw usage_error("the inputs mix PEFT adapters and full models; merge one kind at a time");
  return models > 0;
}

// --base / --rank (or the config's) for full fine-tunes.
FullModelInputs full_model_inputs(const MergeArgs& args, const MergeConfig& cfg) {
  FullModelInputs in;
  in.base = args.given("--base") ? std::filesystem::path(args.base) : cfg.base.value_or("");
  in.rank = args.given("--rank") ? args.rank : cfg.rank.value_or(0);
  return in;
}

// --base and --rank where the inputs are adapters: `who` ("RMM", "--method auto") takes them for
// full fine-tunes only.
void refuse_full_model_options(const MergeArgs& args, const std::string& who) {
  for (const char* o : {"--rank", "--base"})
    if (args.given(o))
      throw usage_error(std::string(o) + ": " + who + " takes it for full fine-tunes only (the inputs are adapters)");
}

// --out-shard-size: a size as --memory-budget takes it. mergekit writes its shard size with K, M
// and B for thousand, million and billion bytes; here B is a byte, so a size under 1 MiB, which
// no shard of a model should be, is taken for that slip.
std::uint64_t out_shard_size(const std::string& text) {
  const auto bytes = parse_byte_size(text, "--out-shard-size");
  if (bytes < (std::uint64_t{1} << 20))
    throw usage_error("--out-shard-size '" + text + "': " + std::to_string(bytes) +
                      " bytes; a shard is at least 1MiB (mergekit's 5B, five billion bytes, is 5GB here)");
  return bytes;
}

// mergekit's MODEL+LORA inputs are models for mergekit's methods; `who` stores adapters or full
// fine-tunes given as folders.
void refuse_models_with_lora(const MergeConfig& cfg, const std::string& who) {
  const auto& [path, w] = *cfg.with_lora.begin();
  throw usage_error((cfg.file.empty() ? "" : cfg.file + ": ") + "'" + w.model.string() + "+" + w.adapter.string() +
                    "' (mergekit's MODEL+LORA) is an input of mergekit's methods, not of " + who +
                    "; give the adapter itself");
}

// --gpus LIST | all into the options (RMM's or the store's): one entry is --gpu, several are
// workers.
template <class Options>
void use_gpus(const MergeArgs& args, Options& o) {
  if (args.given("--gpu")) throw usage_error("--gpus and --gpu: give one of them");
  if (o.device == Device::cpu) throw usage_error("--gpus: GPUs for a merge on --device cpu");
  std::vector<int> gpus;
  if (args.gpus == "all") {
    const auto report = probe_devices();
    for (const auto& g : report.gpus) gpus.push_back(g.index);
    if (gpus.empty()) throw device_error("--gpus all: " + report.why_no_gpu);
  } else {
    std::size_t at = 0;
    while (at <= args.gpus.size()) {
      const auto comma = args.gpus.find(',', at);
      const auto item = args.gpus.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
      if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos || item.size() > 4)
        throw usage_error("--gpus '" + args.gpus + "': '" + item + "' is not a GPU index (write 0,1,2,3 or all)");
      gpus.push_back(std::stoi(item));
      if (comma == std::string::npos) break;
      at = comma + 1;
    }
  }
  o.device = Device::cuda;
  if (gpus.size() == 1) o.gpu = gpus.front();
  else o.gpus = std::move(gpus);
}

void run_rmm(const MergeArgs& args, const MergeConfig& cfg, std::vector<TaskSource> tasks) {
  if (!cfg.with_lora.empty()) refuse_models_with_lora(cfg, "--method rmm");
  // Full fine-tunes (model folders) are compressed to --rank against --base as they are read.
  const bool full = full_models(tasks);
  for (const char* o : kClassicOnly)
    if (args.given(o)) throw usage_error(std::string(o) + ": not an option of --method rmm");
  for (const char* o : {"--storage", "--max-error", "--representations", "--objective", "--timings"})
    if (args.given(o))
      throw usage_error(std::string(o) + ": not an option of --method rmm (it is one of --method "
                        "auto's)");
  if (cfg.storage || cfg.max_error || cfg.objective)
    throw usage_error(cfg.file + ": '" + (cfg.storage ? "storage" : cfg.max_error ? "max_error" : "objective") +
                      "': not a setting of --method rmm (it is one of --method auto's and rank's)");
  if (!full) refuse_full_model_options(args, "RMM");
  if (!cfg.slices.empty())
    throw usage_error(cfg.file + ": 'slices': layer stacking is for mergekit's methods, not --method rmm");
  if (!cfg.tensor_parameters.empty())
    throw usage_error(cfg.file + ": parameter '" + cfg.tensor_parameters.begin()->first +
                      "' set per tensor: not an option of --method rmm");
  if (tasks.size() < 2)
    throw usage_error(tasks.empty() ? "no inputs: give the adapter folders to merge (or a --config "
                                      "naming them)"
                                    : "RMM needs at least 2 adapters to merge, got 1");
  if (!args.given("--basis") && !cfg.basis)
    throw usage_error("--basis: required for --method rmm (1 .. n − 1 = " +
                      std::to_string(tasks.size() - 1) + " here)");
  RmmMergeOptions o;
  o.tasks = std::move(tasks);
  o.basis = args.given("--basis") ? args.basis : *cfg.basis;
  o.out = output_folder(args, cfg);
  o.dtype = output_dtype(args, cfg);
  o.overwrite = args.force;
  o.recipe = output_recipe(cfg.file, cfg.text);
  o.threads = args.threads;
  o.device = parse_device_option(args.device);
  o.gpu = args.gpu;
  o.allow_nonfinite = args.allow_nonfinite;
  o.pipeline_progress = pipeline_progress(args.quiet, "merging");
  if (args.given("--memory-budget")) o.memory_budget = parse_byte_size(args.memory_budget, "--memory-budget");
  o.sequential = args.sequential;
  o.peers = command_peers();
  o.shard_per_rank = args.shard_per_rank;
  if (args.given("--gpus")) use_gpus(args, o);
  // Under mpirun each rank of a machine takes its own GPU unless --gpu names one for all.
  if (!args.given("--gpu") && o.device != Device::cpu)
    if (const auto gpu = gpu_of_this_rank()) o.gpu = *gpu;
  BundleManifest manifest;
  if (full) {
    const auto inputs = full_model_inputs(args, cfg);
    manifest = merge_rmm_models(o, inputs);
    warn_of_tensors_left_out(inputs, o.tasks);
  } else {
    manifest = merge_rmm(o);
    warn_of_modules_kept_whole(o.tasks, "bundle");
  }
  report_bundle(args, manifest, o.out);
}

// --method auto | rank: the budgeted store (bundle version 2).
// The store's step times (--timings): seconds and calls per step, in the order first seen.
class StepTimes {
 public:
  std::function<void(const std::string&, double)> recorder() {
    return [this](const std::string& step, double seconds) {
      const std::lock_guard lock(mutex_);
      auto it = std::find_if(steps_.begin(), steps_.end(), [&](const Step& s) { return s.name == step; });
      if (it == steps_.end()) it = steps_.insert(steps_.end(), Step{step, 0, 0});
      it->seconds += seconds, ++it->calls;
    };
  }
  void print(std::ostream& os) const {
    os << "time by step (wall seconds, summed over modules and workers):\n";
    for (const auto& s : steps_)
      os << "  " << std::left << std::setw(54) << s.name << std::right << std::fixed << std::setprecision(3)
         << std::setw(10) << s.seconds << "  (" << s.calls << (s.calls == 1 ? " call)\n" : " calls)\n");
  }

 private:
  struct Step {
    std::string name;
    double seconds;
    std::uint64_t calls;
  };
  std::mutex mutex_;
  std::vector<Step> steps_;
};

void run_store(const MergeArgs& args, const MergeConfig& cfg, std::vector<TaskSource> tasks,
               const std::string& method) {
  if (!cfg.with_lora.empty()) refuse_models_with_lora(cfg, "--method " + method);
  for (const char* o : kClassicOnly)
    if (args.given(o)) throw usage_error(std::string(o) + ": not an option of --method " + method);
  for (const char* o : {"--sequential", "--memory-budget", "--allow-nonfinite"})
    if (args.given(o)) throw usage_error(std::string(o) + ": not an option of --method " + method);
  if (!cfg.slices.empty() || !cfg.tensor_parameters.empty())
    throw usage_error(cfg.file + ": per-tensor parameters and 'slices' are not options of --method " + method);
  // Full fine-tunes are compressed to --rank against --base first, then stored as adapters.
  const bool full = full_models(tasks);
  if (!full) {
    refuse_full_model_options(args, "--method " + method);
    for (const auto& t : tasks)
      if (!std::filesystem::exists(t.adapter / kAdapterConfigName))
        throw usage_error(t.adapter.string() + ": --method " + method +
                          " stores PEFT adapters or full fine-tunes (neither adapter_config.json nor "
                          "config.json here)");
  }
  StoreMergeOptions o;
  if (full) {
    o.full_models = full_model_inputs(args, cfg);
    o.compress_progress = module_progress(args.quiet || args.json, "compressing");
  }
  o.method = method == "rank" ? StoreMethod::rank : StoreMethod::automatic;
  o.tasks = std::move(tasks);
  if (args.given("--storage"))
    o.storage = parse_storage_budget(args.storage, "--storage");
  else if (cfg.storage)
    o.storage = parse_storage_budget(*cfg.storage, cfg.file + ": 'storage'");
  if (args.given("--max-error"))
    o.max_error = args.max_error;
  else if (cfg.max_error && !args.given("--storage"))
    o.max_error = cfg.max_error;
  if (args.given("--basis") || cfg.basis) o.rmm_basis = {args.given("--basis") ? args.basis : *cfg.basis};
  if (args.given("--representations"))
    o.representations = parse_representations(args.representations, "--representations");
  if (args.given("--objective"))
    o.objective = parse_store_objective(args.objective, "--objective");
  else if (cfg.objective)
    o.objective = parse_store_objective(*cfg.objective, cfg.file + ": 'objective'");
  o.out = output_folder(args, cfg);
  o.dtype = output_dtype(args, cfg);
  o.overwrite = args.force;
  o.recipe = output_recipe(cfg.file, cfg.text);
  o.threads = args.threads;
  o.device = parse_device_option(args.device);
  o.gpu = args.gpu;
  o.progress = module_progress(args.quiet || args.json, "storing");
  o.peers = command_peers();
  o.shard_per_rank = args.shard_per_rank;
  if (args.given("--gpus")) use_gpus(args, o);
  if (!args.given("--gpu") && o.device != Device::cpu)
    if (const auto gpu = gpu_of_this_rank()) o.gpu = *gpu;
  StepTimes times;
  if (args.timings) o.timing = times.recorder();
  const auto manifest = merge_store(o);
  if (o.full_models) warn_of_tensors_left_out(*o.full_models, o.tasks);
  else warn_of_modules_kept_whole(o.tasks, "bundle");
  report_bundle(args, manifest, o.out);
  if (args.timings) times.print(std::cerr);
}

// A per-task parameter from a config: each task's own value, else the config's value for all,
// else `fallback` (the method's default); empty when the config gives none at all.
std::vector<double> per_task(const std::vector<std::optional<double>>& v, std::optional<double> all,
                             double fallback = 1.0) {
  bool any = all.has_value();
  for (const auto& x : v) any = any || x.has_value();
  if (!any) return {};
  std::vector<double> r;
  for (const auto& x : v) r.push_back(x.value_or(all.value_or(fallback)));
  return r;
}

void run_classic(const MergeArgs& args, const MergeConfig& cfg, std::vector<TaskSource> tasks,
                 const std::string& method) {
  if (args.given("--basis") || cfg.basis) throw usage_error("--basis: an option of --method rmm only");
  if (args.given("--sequential"))
    throw usage_error("--sequential: an option of --method rmm (the streamed pipeline) only");
  for (const char* o : {"--storage", "--max-error", "--representations", "--objective", "--timings"})
    if (args.given(o)) throw usage_error(std::string(o) + ": an option of --method auto and rank only");
  if (cfg.storage || cfg.max_error || cfg.objective)
    throw usage_error(cfg.file + ": '" + (cfg.storage ? "storage" : cfg.max_error ? "max_error" : "objective") +
                      "': a setting of --method auto and rank only");
  ClassicMergeOptions o;
  // auto stays on the CPU for these methods: their GPU path is asked for by name.
  o.device = parse_device_option(args.device) == Device::cuda ? Device::cuda : Device::cpu;
  o.gpu = args.gpu;
  if (!args.given("--gpu") && o.device == Device::cuda)
    if (const auto gpu = gpu_of_this_rank()) o.gpu = *gpu;
  o.method = parse_classic_method(method);
  const auto mode = args.given("--mode") ? args.mode : cfg.mode.value_or(args.mode);
  if (mode != "separate" && mode != "combined")
    throw usage_error("--mode: '" + mode + "' is not separate or combined");
  o.mode = mode == "combined" ? LoraMergeMode::combined : LoraMergeMode::separate;
  o.tasks = std::move(tasks);
  o.weights = args.given("--weights") ? parse_number_list(args.weights, "--weights")
                                       : per_task(cfg.task_weights, cfg.weight);
  o.densities = args.given("--density") ? parse_number_list(args.densities, "--density")
                                        : per_task(cfg.task_densities, cfg.density);
  o.scales = args.given("--scale") ? parse_number_list(args.scales, "--scale")
                                   : per_task(cfg.task_scales, cfg.scale, 1.0);
  o.slices = cfg.slices;
  o.with_lora = cfg.with_lora;
  if (cfg.tokenizer_source)
    o.tokenizer_source = *cfg.tokenizer_source == "base" ? std::filesystem::path() : std::filesystem::path(*cfg.tokenizer_source);
  o.chat_template = cfg.chat_template;
  o.gammas = args.given("--gamma") ? parse_number_list(args.gammas, "--gamma")
                                   : per_task(cfg.task_gammas, cfg.gamma, 0.01);
  o.epsilons = args.given("--epsilon") ? parse_number_list(args.epsilons, "--epsilon")
                                       : per_task(cfg.task_epsilons, cfg.epsilon, 0.15);
  if (args.given("--select-topk")) o.select_topk = args.select_topk; else o.select_topk = cfg.select_topk;
  o.nuslerp_flatten = args.no_flatten ? std::optional(false) : cfg.nuslerp_flatten;
  o.nuslerp_row_wise = args.row_wise ? std::optional(true) : cfg.nuslerp_row_wise;
  o.filter_wise = args.filter_wise ? std::optional(true) : cfg.filter_wise;
  if (args.given("--eps")) o.eps = args.eps; else o.eps = cfg.eps;
  if (args.given("--tol")) o.tol = args.tol; else o.tol = cfg.tol;
  if (args.given("--max-iter")) o.max_iter = args.max_iter; else o.max_iter = cfg.max_iter;
  if (args.given("--ram-r")) o.ram_r = args.ram_r; else o.ram_r = cfg.ram_r;
  if (args.given("--ram-alpha")) o.ram_alpha = args.ram_alpha; else o.ram_alpha = cfg.ram_alpha;
  if (args.given("--lambda")) o.lambda = args.lambda; else o.lambda = cfg.lambda;
  // The config's per-tensor values, except where a command-line option sets the parameter.
  o.tensor_parameters = cfg.tensor_parameters;
  o.task_tensor_parameters = cfg.task_tensor_parameters;
  for (const auto& [option, key] : {std::pair{"--weights", "weight"}, std::pair{"--density", "density"},
                                    std::pair{"--gamma", "gamma"}, std::pair{"--epsilon", "epsilon"},
                                    std::pair{"--lambda", "lambda"}, std::pair{"--t", "t"},
                                    std::pair{"--select-topk", "select_topk"}, std::pair{"--scale", "scale"}})
    if (args.given(option)) {
      o.tensor_parameters.erase(key);
      for (auto& m : o.task_tensor_parameters) m.erase(key);
    }
  if (args.given("--t")) o.t = args.t; else o.t = cfg.t;
  const auto sign = args.given("--majority-sign") ? args.majority_sign : cfg.majority_sign.value_or("total");
  if (sign == "total" || sign == "sum") o.election = SignElection::sum;
  else if (sign == "frequency" || sign == "count") o.election = SignElection::count;
  else throw usage_error("--majority-sign: '" + sign + "' is not total (sum) or frequency (count)");
  o.normalize = args.normalize ? std::optional(true) : args.no_normalize ? std::optional(false)
                : cfg.normalize ? cfg.normalize : cfg.normalize_weights;
  o.rescale = args.rescale ? std::optional(true) : args.no_rescale ? std::optional(false) : cfg.rescale;
  o.seed = args.given("--seed") ? args.seed : static_cast<std::uint64_t>(cfg.seed.value_or(0));
  o.rank = args.given("--rank") ? args.rank : cfg.rank.value_or(0);
  if (args.given("--base")) o.base = args.base; else if (cfg.base) o.base = *cfg.base;
  o.full_model = args.full_model;
  o.out = output_folder(args, cfg);
  o.dtype = output_dtype(args, cfg);
  o.overwrite = args.force;
  o.recipe = output_recipe(cfg.file, cfg.text);
  o.allow_nonfinite = args.allow_nonfinite;
  o.threads = args.threads;
  if (args.given("--memory-budget")) o.memory_budget = parse_byte_size(args.memory_budget, "--memory-budget");
  if (args.given("--out-shard-size")) o.max_shard_bytes = out_shard_size(args.out_shard_size);
  o.progress = module_progress(args.quiet || args.json, "merging");
  o.peers = command_peers();
  o.shard_per_rank = args.shard_per_rank;
  const auto r = merge_classic(o);
  for (const auto& w : r.warnings) print_warning(w);
  warn_of_modules_kept_whole(o.tasks, r.output == "adapter" ? "merged adapter" : "merge");
  if (args.json) {
    nlohmann::ordered_json j = {{"method", r.method}, {"mode", r.mode}, {"convention", r.convention},
                                {"output", r.output}, {"path", o.out.string()}, {"merged", r.items}};
    if (r.output == "adapter") j["rank"] = r.rank;
    j["parameters"] = nlohmann::ordered_json::object();
    for (const auto& [name, value] : r.parameters) j["parameters"][name] = value;
    j["warnings"] = r.warnings;
    report_out() << j.dump(1) << "\n";
  } else if (!args.quiet) {
    report_out() << "merged " << r.items << (r.output == "adapter" ? " modules" : " tensors")
              << " with " << r.method << " (" << r.mode << ", " << r.convention
              << " definitions) into " << (r.output == "adapter" ? "adapter " : "model ")
              << o.out.string();
    if (r.output == "adapter") report_out() << " (rank " << r.rank << ")";
    report_out() << "\nparameters:\n";
    for (const auto& [name, value] : r.parameters) report_out() << "  " << name << ": " << value << "\n";
  }
}

}  // namespace

// The folders a config reads (its models, base, slices, tokenizer, MODEL+LORA parts).
std::vector<std::filesystem::path> config_inputs(const MergeConfig& c) {
  std::vector<std::filesystem::path> in;
  for (const auto& t : c.tasks) in.push_back(t.adapter);
  if (c.base) in.push_back(*c.base);
  for (const auto& s : c.slices) {
    in.push_back(s.base);
    for (const auto& src : s.sources) in.push_back(src.model);
  }
  if (c.tokenizer_source) in.emplace_back(*c.tokenizer_source);
  for (const auto& [given, w] : c.with_lora) in.push_back(w.model), in.push_back(w.adapter);
  for (auto& p : in) p = p.lexically_normal();
  return in;
}

void run_one(const MergeArgs& args, MergeConfig cfg) {
  if (!cfg.tasks.empty() && !args.inputs.empty())
    throw usage_error("give the tasks either in --config or as INPUT arguments, not both");
  std::vector<TaskSource> tasks = cfg.tasks;
  for (const auto& a : args.inputs) {
    auto t = task_from_argument(a);
    // mergekit's MODEL+LORA as an argument too: a path that does not exist, made of two that do.
    std::error_code ec;
    if (const auto w = model_with_lora_parts(t.adapter.string(), {});
        w && !std::filesystem::exists(t.adapter, ec) && std::filesystem::exists(w->model, ec) &&
        std::filesystem::exists(w->adapter, ec)) {
      cfg.with_lora[t.adapter] = *w;
      if (t.name == task_name_from_path(t.adapter)) t.name = model_with_lora_name(*w);
    }
    tasks.push_back(std::move(t));
  }
  if (args.given("--out") || cfg.out) {  // (none: each way of merging refuses that by name)
    const auto out = output_folder(args, cfg);
    warn_of_leftovers(out);
    if (args.force) {
      auto inputs = config_inputs(cfg);
      for (const auto& t : tasks) inputs.push_back(t.adapter);
      if (!args.base.empty()) inputs.emplace_back(args.base);
      refuse_replacing_inputs(out, inputs, args.given("--out") ? "--out" : "out_path", "--force");
    }
  }
  const auto method = args.given("--method") ? args.method : cfg.method.value_or(args.method);
  if (method != "rmm" && method != "auto" && method != "rank" && args.given("--gpus"))
    throw usage_error("--gpus: --method " + method + " runs on the CPU (several GPUs take rmm, auto or rank)");
  if (method == "rmm")
    run_rmm(args, cfg, std::move(tasks));
  else if (method == "auto" || method == "rank")
    run_store(args, cfg, std::move(tasks), method);
  else
    run_classic(args, cfg, std::move(tasks), method);
}

}  // namespace revmerge::cli
