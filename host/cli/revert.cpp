// `revmerge revert`: rebuild one task (or all) from a bundle as PEFT adapter folders.
#include <fmt/format.h>
#include <fmt/ostream.h>

#include "command_line.hpp"
#include "commands.hpp"
#include "output_checks.hpp"
#include "backend/registry.hpp"
#include "core/atomic_output.hpp"
#include "revmerge/error.hpp"
#include "revmerge/rmm.hpp"

#include <optional>

namespace revmerge::cli {

void add_revert_command(CLI::App& app) {
  struct Args {
    std::string bundle, task, out, dtype = "f32", base;
    bool all = false, force = false, quiet = false, full = false;
    int threads = 0, gpu = 0;
    std::string device = "auto";
  };
  static Args args;
  args = {};  // each command line starts from the defaults (the Python package runs many)
  auto* cmd = app.add_subcommand("revert", "Rebuild a task's adapter (or full model) from an RMM bundle");
  cmd->add_option("BUNDLE", args.bundle, "bundle folder written by `revmerge merge`")->required();
  auto* task = cmd->add_option("--task,-t", args.task, "task to rebuild");
  auto* all = cmd->add_flag("--all", args.all, "rebuild every task into OUT/<task name>");
  task->excludes(all);
  cmd->add_option("--out,-o", args.out, "adapter folder to create (with --all: parent folder)")->required();
  auto* dtype = cmd->add_option("--dtype", args.dtype,
                                "output dtype: f32, f16, bf16 (adapters default f32; --full: the base's)");
  cmd->add_flag("--full", args.full, "write base + the task's delta as a full model (needs --base)");
  cmd->add_option("--base", args.base, "base model folder for --full");
  cmd->add_flag("--force", args.force, "replace an existing output folder");
  cmd->add_option("--threads", args.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", args.device, "cpu, cuda or auto (default: cuda when a GPU is usable)");
  cmd->add_option("--gpu", args.gpu, "CUDA device index (default 0)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--quiet,-q", args.quiet, "print nothing on success but warnings (to stderr)");
  cmd->callback([dtype] {
    if (args.task.empty() && !args.all) throw usage_error("give --task NAME or --all");
    const Bundle bundle(args.bundle);
    RevertOptions o;
    o.dtype = parse_float_dtype_option(args.dtype, "--dtype");
    o.overwrite = args.force;
    o.threads = args.threads;
    o.device = parse_device_option(args.device);
    o.gpu = args.gpu;
    o.recipe = output_recipe();
    warn_of_leftovers(args.out);
    if (args.force) refuse_replacing_inputs(args.out, {args.bundle, args.base}, "--out", "--force");
    if (args.full && args.base.empty()) throw usage_error("--full: give the base model with --base");
    if (!args.full && !args.base.empty()) throw usage_error("--base: only with --full");
    const auto one = [&](const std::string& task, const std::filesystem::path& out) {
      if (!args.full) return revert_task(bundle, task, out, o);
      std::optional<DType> model_dtype;
      if (dtype->count()) model_dtype = o.dtype;
      revert_task_full(bundle, task, args.base, out, o, model_dtype);
    };
    if (!args.all) {
      one(args.task, args.out);
      if (!args.quiet) fmt::print(report_out(), "wrote task '{}' to {}\n", args.task, args.out);
      return;
    }
    // Every task inside one staged folder: all of them appear, or none.
    StagedDir staged(args.out, args.force);
    o.overwrite = false;
    for (const auto& t : bundle.manifest().tasks) one(t.name, staged.path() / t.name);
    staged.commit();
    if (!args.quiet)
      fmt::print(report_out(), "wrote {} tasks to {}\n", bundle.manifest().tasks.size(), args.out);
  });
}

}  // namespace revmerge::cli
