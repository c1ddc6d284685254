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

/// One module across all tasks: the task's own module entries, in task order (adapters only);
/// each task's rank; `rank` is the largest of them (the padded rank).
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
};

/// Throws usage_error for an empty task name, or one used twice (naming both sources and how to
/// name them apart).
void check_task_names(const std::vector<TaskSource>& tasks);

/// Opens every task's adapter and matches the modules. Throws what PeftAdapter throws, and
/// shape_error for a module missing from a task or with another base shape.
AdapterSet open_adapter_set(const std::vector<TaskSource>& tasks);

/// One task's factors of one module as stored (A rank × in, B out × rank, unscaled) and its scale.
struct TaskFactors {
  std::vector<float> a, b;
  std::int64_t rank;
  double scale;
};

/// Every task's factors of module `pm`, in task order; non-finite values refused.
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
