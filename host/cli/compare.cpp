// `revmerge compare`: RMM at several basis sizes against the classic methods on one adapter set.
#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "backend/registry.hpp"
#include "commands.hpp"
#include "progress.hpp"
#include "merge_config.hpp"
#include "revmerge/compare.hpp"
#include "revmerge/error.hpp"
#include "text_format.hpp"
#include "command_line.hpp"

namespace revmerge::cli {
namespace {

struct CompareArgs {
  std::vector<std::string> adapters;
  std::string methods, basis, weights;
  double density = 0.5;
  std::uint64_t seed = 0;
  int threads = 0, gpu = 0;
  std::string device = "auto";
  bool json = false, no_stores = false;
};

// "ties" (both modes), "ties:separate", "svd", ...
std::vector<CompareMethod> parse_methods(const std::vector<std::string>& names) {
  std::vector<CompareMethod> out;
  for (const auto& name : names) {
    const auto colon = name.find(':');
    const auto method = parse_classic_method(name.substr(0, colon));
    if (full_models_only(method))
      throw usage_error("--methods: " + name + " merges full models; compare measures methods on adapters");
    const auto mode = colon == std::string::npos ? "" : name.substr(colon + 1);
    if (!mode.empty() && mode != "separate" && mode != "combined")
      throw usage_error("--methods: '" + name + "': the mode after ':' is separate or combined");
    const bool lowrank_only = method == ClassicMethod::cat || method == ClassicMethod::svd;
    if (mode.empty() && !lowrank_only) {
      out.push_back({method, LoraMergeMode::separate});
      out.push_back({method, LoraMergeMode::combined});
    } else {
      out.push_back({method, mode == "separate" ? LoraMergeMode::separate : LoraMergeMode::combined});
    }
  }
  return out;
}

void print_table(const CompareReport& r) {
  std::size_t label = 6;
  for (const auto& row : r.rows) label = std::max(label, row.label.size());
  report_out() << fmt::format("delta error per task (‖ΔŴ_i − ΔW_i‖_F / ‖ΔW_i‖_F over all modules); "
                           "storage relative to keeping all {} adapters\n",
                           r.tasks.size());
  report_out() << fmt::format("{:<{}}  {:>8}  {:>8}", "method", label, "storage", "mean");
  std::vector<std::size_t> width;
  for (const auto& t : r.tasks) {
    width.push_back(std::max<std::size_t>(9, t.size()));
    report_out() << fmt::format("  {:>{}}", t, width.back());
  }
  report_out() << "\n";
  for (const auto& row : r.rows) {
    if (row.note.empty())
      report_out() << fmt::format("{:<{}}  {:>8.4f}  {:>8.4f}", row.label, label, row.storage,
                               row.mean_error);
    if (!row.note.empty()) {
      report_out() << fmt::format("{:<{}}  not applicable: {}\n", row.label, label, row.note);
      continue;
    }
    for (std::size_t t = 0; t < row.task_error.size(); ++t)
      report_out() << fmt::format("  {:>{}.4f}", row.task_error[t], width[t]);
    report_out() << "\n";
  }
}

void run_compare(const CompareArgs& args) {
  CompareOptions o;
  for (const auto& a : args.adapters) o.tasks.push_back(task_from_argument(a));
  if (!args.basis.empty()) o.basis_sizes = parse_integer_list(args.basis, "--basis");
  if (!args.methods.empty()) o.methods = parse_methods(split_list(args.methods));
  if (!args.weights.empty()) o.weights = parse_number_list(args.weights, "--weights");
  o.density = args.density;
  o.seed = args.seed;
  o.threads = args.threads;
  o.device = parse_device_option(args.device);
  o.gpu = args.gpu;
  o.stores = !args.no_stores;
  o.progress = module_progress(false, "comparing");
  const auto r = compare_methods(o);
  if (!args.json) return print_table(r);
  nlohmann::ordered_json j;
  j["tasks"] = r.tasks;
  j["density"] = o.density;
  for (const auto& row : r.rows)
    j["rows"].push_back({{"method", row.label}, {"storage", row.storage},
                         {"mean_delta_error", row.mean_error}, {"delta_error", row.task_error},
                         {"weights", row.weights}, {"note", row.note}});
  report_out() << j.dump(1) << "\n";
}

}  // namespace

void add_compare_command(CLI::App& app) {
  static CompareArgs args;
  args = {};  // each command line starts from the defaults (the Python package runs many)
  auto* cmd = app.add_subcommand(
      "compare", "Compare RMM at several basis sizes with the classic methods and the budgeted "
                 "store (at each RMM row's storage: rank, RMM with a P per module and side, the "
                 "shared bases, each alone, then auto) on one adapter set: per-task delta error "
                 "and storage");
  cmd->add_option("ADAPTER", args.adapters, "PEFT adapter folders (at least 2)")->required();
  cmd->add_option("--basis", args.basis, "RMM basis sizes, comma-separated (default: 1, n/4, n/2, n − 1)");
  cmd->add_option("--methods", args.methods,
                  "classic methods, e.g. ties,dare_ties:separate,svd (default: all, both modes)");
  cmd->add_option("--weights", args.weights,
                  "classic methods' weights, one per task (default: each method averages: 1 for "
                  "ties / dare_ties, 1/n combined, 1/n² separate)");
  cmd->add_option("--density", args.density, "fraction kept by TIES / DARE / magnitude pruning (0.5)");
  cmd->add_option("--seed", args.seed, "DARE's mask seed (default 0)");
  cmd->add_option("--threads", args.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", args.device, "RMM's device: cpu, cuda or auto");
  cmd->add_option("--gpu", args.gpu, "CUDA device index (default 0)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--no-stores", args.no_stores,
                "leave out the budgeted store's rows (each costs a store merge per RMM row)");
  cmd->add_flag("--json", args.json, "print the comparison as JSON");
  cmd->callback([] { run_compare(args); });
}

}  // namespace revmerge::cli
