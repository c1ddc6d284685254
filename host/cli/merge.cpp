// `revmerge merge`: RMM of LoRA adapters into a reversible bundle, or a classic method (task
// arithmetic, TIES, DARE, ...) into one adapter or model.

#include "bundle_report.hpp"
#include "core/memory_info.hpp"
#include "progress.hpp"
#include "commands.hpp"
#include "command_line.hpp"
#include "merge_config.hpp"
#include "backend/registry.hpp"
#include "revmerge/classic.hpp"
#include "revmerge/devices.hpp"
#include "revmerge/error.hpp"
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

namespace revmerge::cli {
namespace {

struct MergeArgs {
  std::vector<std::string> inputs;
  std::string method = "rmm", dtype, config, mode = "separate", majority_sign = "total";
  std::int64_t basis = 0, rank = 0;
  std::uint64_t seed = 0;
  std::string weights, densities, gammas, epsilons, scales;
  double lambda = 1, t = 0, select_topk = 1;
  std::string out, base;
  bool force = false, json = false, quiet = false, allow_nonfinite = false, full_model = false;
  bool normalize = false, no_normalize = false, rescale = false, no_rescale = false;
  bool no_flatten = false, row_wise = false, filter_wise = false;
  double eps = 1e-8, tol = 1e-5, ram_r = 0.1, ram_alpha = 0.2;
  std::int64_t max_iter = 10;
  int threads = 0, gpu = 0;
  std::string device = "auto", gpus, memory_budget, storage, representations, objective = "mean", out_shard_size;
  double max_error = 0;
  bool sequential = false, shard_per_rank = false, timings = false;
  std::map<std::string, CLI::Option*> opt;
  bool given(const std::string& name) const { return opt.at(name)->count() > 0; }
};

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
    manifest = merge_rmm_models(o, full_model_inputs(args, cfg));
  } else {
    manifest = merge_rmm(o);
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

// mergekit-mega: a config of several documents, each a merge into its own out_path. A document
// that reads another's output runs after it; an output that already exists is kept, as
// mergekit-mega keeps it (--force merges it again), so that a run stopped half-way resumes.
void run_documents(const MergeArgs& args, std::vector<MergeConfig> cfgs) {
  const auto& file = args.config;
  const auto n = cfgs.size();
  const auto doc = [&](std::size_t i) {
    return file + " (document " + std::to_string(i + 1) + " of " + std::to_string(n) + ")";
  };
  if (args.given("--out"))
    throw usage_error("--out: " + file + " holds " + std::to_string(n) +
                      " merges (a mergekit-mega config), each into its own out_path");
  if (!args.inputs.empty())
    throw usage_error("INPUT: " + file + " holds " + std::to_string(n) + " merges that name their models");
  std::vector<std::filesystem::path> outs;
  for (std::size_t i = 0; i < n; ++i) {
    if (!cfgs[i].out) throw format_error(doc(i) + ": no out_path (each merge of a mergekit-mega config names its output)");
    outs.push_back(cfgs[i].out->lexically_normal());
    for (std::size_t j = 0; j < i; ++j)
      if (outs[j] == outs[i]) throw format_error(doc(i) + ": out_path " + outs[i].string() + " is document " +
                                                 std::to_string(j + 1) + "'s too");
  }
  std::vector<std::vector<std::size_t>> needs(n);
  for (std::size_t i = 0; i < n; ++i)
    for (const auto& p : config_inputs(cfgs[i]))
      for (std::size_t j = 0; j < n; ++j)
        if (outs[j] == p) needs[i].push_back(j);
  // The file's order, each document after the ones it reads.
  std::vector<std::size_t> order;
  std::vector<bool> done(n, false);
  while (order.size() < n) {
    bool moved = false;
    for (std::size_t i = 0; i < n; ++i)
      if (!done[i] && std::all_of(needs[i].begin(), needs[i].end(), [&](std::size_t j) { return done[j]; })) {
        order.push_back(i);
        done[i] = moved = true;
        break;
      }
    if (!moved) {
      const auto i = static_cast<std::size_t>(std::find(done.begin(), done.end(), false) - done.begin());
      throw format_error(doc(i) + ": reads an output that, through the other documents, needs its own (" +
                         outs[i].string() + "); the merges form a cycle");
    }
  }
  for (std::size_t k = 0; k < n; ++k) {
    const auto i = order[k];
    if (std::error_code ec; std::filesystem::exists(outs[i], ec) && !args.force) {
      if (!args.quiet) print_warning("kept " + outs[i].string() + " (" + doc(i) + "): it exists; --force merges it again");
      continue;
    }
    if (!args.quiet && !args.json) report_out() << "merge " << k + 1 << " of " << n << ": " << doc(i) << "\n";
    run_one(args, cfgs[i]);
  }
}

void run_merge(const MergeArgs& args) {
  if (args.config.empty()) return run_one(args, MergeConfig{});
  auto cfgs = read_merge_configs(args.config);
  if (cfgs.size() > 1) return run_documents(args, std::move(cfgs));
  run_one(args, cfgs.front());
}

}  // namespace

void add_merge_command(CLI::App& app) {
  static MergeArgs args;
  args = {};  // each command line starts from the defaults (the Python package runs many)
  auto* cmd = app.add_subcommand(
      "merge", "Merge LoRA adapters or fine-tuned models (RMM: into a reversible bundle; "
               "classic methods: into one adapter or model)");
  auto& opt = args.opt;
  cmd->add_option("INPUT", args.inputs,
                  "PEFT adapter folders (or, for the classic methods, full model folders); each "
                  "task is named after its folder");
  opt["--method"] = cmd->add_option("--method", args.method,
      "rmm (default), auto (per module the best of RMM per side, each task's own truncation "
      "and bases shared by the tasks under --storage), rank (truncations only), linear, task_arithmetic, ties, dare_linear, "
      "dare_ties, magnitude_prune, cat, svd, slerp, nearswap, model_stock, breadcrumbs, breadcrumbs_ties, della, "
      "della_linear, sce, nuslerp, multislerp, karcher, ram, ramplus_tl, arcee_fusion, "
      "passthrough");
  opt["--basis"] = cmd->add_option("--basis,-p", args.basis,
      "RMM basis size P, 1 .. n − 1 (auto: the one P it weighs; default every P up to 8, then powers of 2, below n)");
  opt["--storage"] = cmd->add_option("--storage", args.storage,
      "auto, rank: what the bundle may store, as a fraction of the adapters' numbers (0.25, "
      "25%) or a size in the stored dtype (2GiB)");
  opt["--representations"] = cmd->add_option("--representations", args.representations,
      "auto: the representations it weighs per module, comma-separated: rmm, rank, shared_rows "
      "(a row basis), shared (row and column bases) (default all; without rank, truncations "
      "only where nothing listed fits)");
  opt["--timings"] = cmd->add_flag("--timings", args.timings,
      "auto, rank: print where the time went, step by step (wall seconds summed over the modules and "
      "this process's workers), to stderr");
  opt["--objective"] = cmd->add_option("--objective", args.objective,
      "auto, rank under --storage: what the budget lowers, mean (the mean task's relative delta "
      "error, default) or max (the worst task's)");
  opt["--max-error"] = cmd->add_option("--max-error", args.max_error,
      "auto, rank instead of --storage: the largest relative delta error any task may have in "
      "any module; each module stored as cheaply as that allows");
  opt["--out"] = cmd->add_option("--out,-o", args.out, "folder to create (bundle, adapter or model)");
  cmd->add_option("--config", args.config,
                  "YAML/JSON file naming the tasks (revmerge's tasks: [{name, adapter}] or "
                  "mergekit's models: [{model, parameters}]) and option defaults; several YAML "
                  "documents (mergekit-mega) are merges run in turn, each into its out_path");
  opt["--dtype"] = cmd->add_option("--dtype", args.dtype,
      "output dtype: f32, f16, bf16 (default: RMM bundles and full models the inputs', "
      "other adapters f32)");
  opt["--mode"] = cmd->add_option("--mode", args.mode,
      "LoRA inputs: separate (merge the A's and the B's, as PEFT) or combined (merge the "
      "products BA, then re-compress or write a full model)");
  opt["--weights"] = cmd->add_option("--weights", args.weights,
                                     "one weight per task, comma-separated (default 1)");
  opt["--density"] = cmd->add_option("--density", args.densities,
      "fraction kept by TIES / DARE / DELLA / breadcrumbs / magnitude pruning: one value, or "
      "one per task (comma-separated)");
  opt["--gamma"] = cmd->add_option("--gamma", args.gammas,
      "breadcrumbs: fraction of largest magnitudes dropped as outliers: one value, or one per "
      "task (default 0.01)");
  opt["--epsilon"] = cmd->add_option("--epsilon", args.epsilons,
      "della: keep probabilities run from density − epsilon (smallest magnitude in a row) to "
      "density + epsilon (largest): one value, or one per task (default 0.15); ram, ramplus_tl: "
      "the change below which an element counts as unchanged (default 1e-5)");
  opt["--select-topk"] = cmd->add_option("--select-topk", args.select_topk,
      "sce: fraction of elements kept by their variance across the tasks (default 1: all)");
  opt["--no-flatten"] = cmd->add_flag("--no-flatten", args.no_flatten,
      "nuslerp: interpolate each vector along the last axis instead of the whole tensor");
  opt["--row-wise"] = cmd->add_flag("--row-wise", args.row_wise,
      "nuslerp with --no-flatten: vectors along the first axis instead (mergekit's nuslerp_row_wise)");
  opt["--filter-wise"] = cmd->add_flag("--filter-wise", args.filter_wise,
      "model_stock: one angle per row (each vector along the last axis) instead of per tensor");
  opt["--eps"] = cmd->add_option("--eps", args.eps, "multislerp: norm guard (default 1e-8)");
  opt["--tol"] = cmd->add_option("--tol", args.tol, "karcher: convergence tolerance (default 1e-5)");
  opt["--max-iter"] = cmd->add_option("--max-iter", args.max_iter, "karcher: most iterations (default 10)");
  opt["--scale"] = cmd->add_option("--scale", args.scales,
      "passthrough: multiply the model's tensors by this (default 1)");
  opt["--ram-r"] = cmd->add_option("--ram-r", args.ram_r,
      "ramplus_tl: boost of each task's unique changes (mergekit's r, default 0.1)");
  opt["--ram-alpha"] = cmd->add_option("--ram-alpha", args.ram_alpha,
      "ramplus_tl: cap of the shared-to-unique ratio (mergekit's alpha, default 0.2)");
  opt["--lambda"] = cmd->add_option("--lambda", args.lambda, "scale of the merged delta (default 1)");
  opt["--t"] = cmd->add_option("--t", args.t,
      "slerp: where between the base (0) and the fine-tune (1) the merge lies; nearswap: the "
      "difference below which an element takes the fine-tune's value");
  opt["--majority-sign"] = cmd->add_option("--majority-sign", args.majority_sign,
      "TIES sign election: total (sum, default) or frequency (count)");
  opt["--normalize"] = cmd->add_flag("--normalize", args.normalize,
      "divide by the agreeing tasks (TIES) or the weights' sum (others; multislerp: weights "
      "normalised to sum 1, the default)");
  opt["--no-normalize"] = cmd->add_flag("--no-normalize", args.no_normalize, "do not divide");
  opt["--rescale"] = cmd->add_flag("--rescale", args.rescale,
      "rescale each task after its drop or trim (default for DARE and DELLA; full models: to "
      "the task's L1 norm, adapters: by 1 / density)");
  opt["--no-rescale"] = cmd->add_flag("--no-rescale", args.no_rescale, "do not rescale");
  opt["--seed"] = cmd->add_option("--seed", args.seed, "DARE's and DELLA's mask seed (default 0)");
  opt["--rank"] = cmd->add_option("--rank", args.rank,
      "rank of a re-compressed adapter (svd, combined mode; default: the largest input rank); "
      "rmm, auto and rank over full fine-tunes: the rank each task's delta is compressed to first");
  opt["--base"] = cmd->add_option("--base", args.base,
      "base model folder: for full-model inputs, and for --full-model");
  opt["--full-model"] = cmd->add_flag("--full-model", args.full_model,
      "adapters: write base + merged delta as a full model instead of an adapter");
  cmd->add_flag("--force", args.force, "replace an existing output folder");
  cmd->add_option("--threads", args.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", args.device,
                  "cpu, cuda or auto (default: cuda when a GPU is usable; the classic methods stay on the CPU "
                  "unless given cuda, which runs every full-model merge (mergekit's methods and layer slices); "
                  "the classic merges of LoRA adapters run on the CPU only)");
  opt["--gpu"] = cmd->add_option("--gpu", args.gpu,
      "CUDA device index (default 0; under mpirun each rank of a machine its own: its rank there "
      "modulo the GPUs)")->check(CLI::NonNegativeNumber);
  opt["--gpus"] = cmd->add_option("--gpus", args.gpus,
      "rmm, auto, rank: several GPUs, e.g. 0,1,2,3 or all: one worker per entry (an index may "
      "repeat), each with its share of the modules and of --threads, --memory-budget being each "
      "worker's (default: half the free host memory divided among them); the bundle is the one "
      "GPU's bytes. Under mpirun: each rank's GPUs, every rank giving as many");
  opt["--shard-per-rank"] = cmd->add_flag("--shard-per-rank", args.shard_per_rank,
      "under mpirun (or --gpus): no file written by two workers. Bundles: each worker writes its "
      "tensors into a shard of its own, listed by bundle.safetensors.index.json, instead of all "
      "into the one file; models: each worker's tensors start a shard of the index (the same "
      "tensors, byte for byte). One worker: the usual output");
  opt["--allow-nonfinite"] = cmd->add_flag("--allow-nonfinite", args.allow_nonfinite,
                "RMM: merge adapters holding NaN or Inf instead of refusing them (the affected "
                "positions come out non-finite)");
  opt["--out-shard-size"] = cmd->add_option("--out-shard-size", args.out_shard_size,
      "full models: the largest safetensors shard written, e.g. 2GB or 1GiB (default 5GB, as "
      "transformers and mergekit; a larger tensor is a shard of its own)");
  opt["--memory-budget"] = cmd->add_option("--memory-budget", args.memory_budget,
      "host (and GPU) memory the merge may hold, e.g. 2GiB (default: half the free host "
      "memory, 90% of the free GPU memory). RMM: too small for one module is an error naming it; "
      "full models: tensors are merged in pieces that fit it");
  opt["--sequential"] = cmd->add_flag("--sequential", args.sequential,
      "RMM: one module at a time on one thread instead of the overlapped pipeline (same output)");
  cmd->add_flag("--json", args.json, "print the report as JSON");
  cmd->add_flag("--quiet,-q", args.quiet, "print nothing on success");
  cmd->callback([] { run_merge(args); });
}

}  // namespace revmerge::cli
