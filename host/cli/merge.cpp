// `revmerge merge`: RMM of LoRA adapters into a reversible bundle.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "bundle_report.hpp"
#include "commands.hpp"
#include "merge_config.hpp"
#include "revmerge/error.hpp"
#include "backend/registry.hpp"
#include "revmerge/rmm.hpp"

namespace revmerge::cli {
namespace {

struct MergeArgs {
  std::vector<std::string> adapters;
  std::string method = "rmm", dtype, config;
  std::int64_t basis = 0;
  std::string out;
  bool force = false, json = false, quiet = false, allow_nonfinite = false;
  int threads = 0, gpu = 0;
  std::string device = "auto";
  CLI::Option* method_opt = nullptr;
  CLI::Option* basis_opt = nullptr;
  CLI::Option* out_opt = nullptr;
  CLI::Option* dtype_opt = nullptr;
};

void run_merge(const MergeArgs& args) {
  MergeConfig cfg;
  if (!args.config.empty()) cfg = read_merge_config(args.config);
  if (!cfg.tasks.empty() && !args.adapters.empty())
    throw usage_error("give the tasks either in --config or as ADAPTER arguments, not both");
  const auto method = args.method_opt->count() ? args.method : cfg.method.value_or(args.method);
  if (method != "rmm")
    throw usage_error("--method: '" + method + "' is not available in this version (available: rmm)");

  RmmMergeOptions o;
  o.tasks = cfg.tasks;
  for (const auto& a : args.adapters) o.tasks.push_back({task_name_from_path(a), a});
  o.basis = args.basis_opt->count() ? args.basis : cfg.basis.value_or(0);
  if (o.basis == 0) throw usage_error("--basis: required for --method rmm (1 .. n − 1)");
  if (args.out_opt->count())
    o.out = args.out;
  else if (cfg.out)
    o.out = *cfg.out;
  else
    throw usage_error("--out: required (the bundle folder to create)");
  const auto dtype = args.dtype_opt->count() ? args.dtype : cfg.dtype.value_or("f32");
  o.dtype = parse_float_dtype_option(dtype, "--dtype");
  o.overwrite = args.force;
  o.threads = args.threads;
  o.device = parse_device_option(args.device);
  o.gpu = args.gpu;
  o.allow_nonfinite = args.allow_nonfinite;
  const bool show_progress = !args.quiet && !args.json && ::isatty(STDERR_FILENO);
  if (show_progress)
    o.progress = [](std::size_t done, std::size_t all, const std::string& path) {
      std::fprintf(stderr, "\r\033[Kmerging %zu/%zu %s", done, all, path.c_str());
      if (done == all) std::fprintf(stderr, "\r\033[K");
    };
  const auto manifest = merge_rmm(o);
  if (args.json)
    std::cout << bundle_report_json(manifest, o.out.string()).dump(1) << "\n";
  else if (!args.quiet)
    print_bundle_report(manifest, o.out.string(), 5);
}

}  // namespace

void add_merge_command(CLI::App& app) {
  static MergeArgs args;
  auto* cmd = app.add_subcommand("merge", "Merge LoRA adapters (RMM: into a reversible bundle)");
  cmd->add_option("ADAPTER", args.adapters, "PEFT adapter folders; each task is named after its folder");
  args.method_opt = cmd->add_option("--method", args.method, "merging method (rmm)");
  args.basis_opt = cmd->add_option("--basis,-p", args.basis, "RMM basis size P, 1 .. n − 1");
  args.out_opt = cmd->add_option("--out,-o", args.out, "bundle folder to create");
  cmd->add_option("--config", args.config,
                  "YAML/JSON file naming the tasks (tasks: [{name, adapter}]) and option defaults");
  args.dtype_opt = cmd->add_option("--dtype", args.dtype, "stored dtype: f32 (default), f16, bf16");
  cmd->add_flag("--force", args.force, "replace an existing output folder");
  cmd->add_option("--threads", args.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", args.device, "cpu, cuda or auto (default: cuda when a GPU is usable)");
  cmd->add_option("--gpu", args.gpu, "CUDA device index (default 0)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--allow-nonfinite", args.allow_nonfinite,
                "merge adapters holding NaN or Inf instead of refusing them (the affected "
                "positions come out non-finite)");
  cmd->add_flag("--json", args.json, "print the bundle report as JSON");
  cmd->add_flag("--quiet,-q", args.quiet, "print nothing on success");
  cmd->callback([] { run_merge(args); });
}

}  // namespace revmerge::cli
