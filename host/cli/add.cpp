// `revmerge add`: more tasks in an existing bundle, the existing tasks' bytes untouched.

#include "bundle_report.hpp"
#include "command_line.hpp"
#include "commands.hpp"
#include "merge_config.hpp"
#include "output_checks.hpp"
#include "text_format.hpp"
#include "progress.hpp"
#include "revmerge/store.hpp"

namespace revmerge::cli {
namespace {

struct AddArgs {
  std::string bundle, out;
  std::vector<std::string> adapters;
  double max_error = 0;
  int threads = 0;
  bool force = false, json = false, quiet = false;
  CLI::Option* max_error_option = nullptr;
};

void run_add(const AddArgs& args) {
  AddTasksOptions o;
  o.bundle = args.bundle;
  for (const auto& a : args.adapters) o.tasks.push_back(task_from_argument(a));
  o.out = args.out;
  if (args.max_error_option->count() > 0) o.max_error = args.max_error;
  o.overwrite = args.force;
  o.threads = args.threads;
  o.recipe = output_recipe();
  o.progress = module_progress(args.quiet || args.json, "adding");
  warn_of_leftovers(o.out);
  const auto manifest = add_tasks(o);
  for (const auto& w : bundle_warnings(manifest)) print_warning(w);
  if (args.json)
    report_out() << bundle_report_json(manifest, o.out.string()).dump(1) << "\n";
  else if (!args.quiet)
    print_bundle_report(manifest, o.out.string(), 5);
}

}  // namespace

void add_add_command(CLI::App& app) {
  static AddArgs args;
  args = {};  // each command line starts from the defaults (the Python package runs many)
  auto* cmd = app.add_subcommand(
      "add", "Add tasks to a bundle without its tasks' adapters: each new task kept per module as "
             "its own truncation within the module's error, the existing tasks' bytes copied");
  cmd->add_option("BUNDLE", args.bundle, "bundle folder written by `revmerge merge`")->required();
  cmd->add_option("ADAPTER", args.adapters,
                  "PEFT adapter folders to add (NAME=PATH to name a task; default: the folder's name)")
      ->required();
  cmd->add_option("--out,-o", args.out, "the new bundle folder")->required();
  args.max_error_option = cmd->add_option("--max-error", args.max_error,
      "largest relative delta error of a new task in any module (default: per module, the worst "
      "of the bundle's tasks there)");
  cmd->add_flag("--force", args.force, "replace an existing output folder");
  cmd->add_option("--threads", args.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--json", args.json, "print the report as JSON");
  cmd->add_flag("--quiet,-q", args.quiet, "print nothing on success but warnings (to stderr)");
  cmd->callback([] { run_add(args); });
}

}  // namespace revmerge::cli
