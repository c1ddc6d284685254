#pragma once
// A set of PEFT adapters merged together: every task's folder opened and validated, and the
// modules matched across tasks (same paths, same base shapes). Shared by every LoRA method.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/rmm.hpp"

namespace revmerge {

/// One module across all tasks: the task's own module entries, in task order (adapters only;
/// null for a task without the module where a merge takes it as a zero delta); each task's rank
/// (0 where missing); `rank` is the largest of them (the padded rank).
struct PlannedModule {
  std::string path;
  int layer;
  std::string name;
  std::int64_t in, out, rank;
  std::vector<const LoraModule*> per_task;
  std::vector<std::int64_t> task_ranks;
};

struct AdapterSet {
  std::vector<std::unique_ptr<PeftAdapter>> adapters;  ///< in task order
  std::vector<PlannedModule> plan;                     ///< sorted by (layer, name)
  std::vector<std::size_t> missing;  ///< per task: modules of the plan it lacks (zero deltas)
};

/// What a merge does with a module some tasks adapt and others do not: refuse it (RMM: a
/// reverted task would gain a module it never had), or take it as a zero delta in the tasks
/// without it (the classic methods, as PEFT's add_weighted_adapter skips them).
enum class MissingModules { refuse, zero };

/// Throws usage_error for an empty task name, or one used twice (naming both sources and how to
/// name them apart).
void check_task_names(const std::vector<TaskSource>& tasks);

/// Every folder the tasks are read from (each adapter, and the origin it stands for, if any):
/// the inputs an output written with overwrite must not replace (refuse_replacing_inputs).
std::vector<std::filesystem::path> task_folders(const std::vector<TaskSource>& tasks);

/// Opens every task's adapter and matches the modules: the plan is every module of any task.
/// Throws what PeftAdapter throws, and shape_error for a module with another base shape, or
/// missing from a task under MissingModules::refuse.
AdapterSet open_adapter_set(const std::vector<TaskSource>& tasks,
                            MissingModules missing = MissingModules::refuse);

/// Warnings about the set: tasks for differently named base models (naming them), modules
/// taken as zero deltas (how many, in which tasks).
std::vector<std::string> adapter_set_warnings(const std::vector<TaskSource>& tasks, const AdapterSet& set);

/// "the tasks name different base models: 'x' (a, b) and 'y' (c)", or empty when they agree
/// (names differing only in a trailing slash agree); `names` and `bases` in task order.
std::string differing_base_models(const std::vector<std::string>& names, const std::vector<std::string>& bases);

/// A bundle manifest entry with the module's identity and shape filled in (path, layer, name,
/// in, out, the padded rank, each task's rank); its representation and errors left to the merge.
BundleModule module_entry(const PlannedModule& pm);

/// One task's factors of one module as stored (A rank × in, B out × rank, unscaled) and its scale.
struct TaskFactors {
  std::vector<float> a, b;
  std::int64_t rank;
  double scale;
};

/// Every task's factors of module `pm`, in task order; non-finite values refused. A task
/// without the module gets zero factors of the module's rank (scale 1).
std::vector<TaskFactors> read_module_factors(const AdapterSet& set, const PlannedModule& pm);

// Library and solver failures name the module being merged.
template <class F>
auto with_module_context(const std::string& path, F f) {
  try {
    return f();
  } catch (const device_error& e) {
    throw device_error("module '" + path + "': " + e.what());
  } catch (const solver_error& e) {
    throw solver_error("module '" + path + "': " + e.what());
  }
}

}  // namespace revmerge
