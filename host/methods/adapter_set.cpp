#include "methods/adapter_set.hpp"

#include <algorithm>
#include <cmath>
#include <map>

namespace revmerge {
namespace {

using i64 = std::int64_t;

std::vector<PlannedModule> plan_modules(const std::vector<TaskSource>& tasks,
                                        const std::vector<std::unique_ptr<PeftAdapter>>& adapters) {
  std::vector<PlannedModule> plan;
  for (const auto& m : adapters[0]->modules())
    plan.push_back({m.path, m.layer, m.name, m.in, m.out, m.rank, {}, {}});
  for (std::size_t t = 0; t < adapters.size(); ++t) {
    const auto& a = *adapters[t];
    if (a.config().fan_in_fan_out != adapters[0]->config().fan_in_fan_out)
      throw shape_error(a.dir().string() + ": fan_in_fan_out differs from " +
                        adapters[0]->dir().string() + "; the adapters are for different bases");
    for (const auto& m : a.modules())
      if (!adapters[0]->find(m.path))
        throw shape_error(a.dir().string() + ": module '" + m.path + "' of task '" + tasks[t].name +
                          "' is missing from task '" + tasks[0].name + "' (" +
                          adapters[0]->dir().string() + ")");
    for (auto& p : plan) {
      const auto* m = a.find(p.path);
      if (!m)
        throw shape_error(a.dir().string() + ": module '" + p.path + "' is missing from task '" +
                          tasks[t].name + "'; every task must adapt the same modules");
      if (m->in != p.in || m->out != p.out)
        throw shape_error(a.dir().string() + ": module '" + p.path + "' is " +
                          std::to_string(m->out) + " × " + std::to_string(m->in) + " in task '" +
                          tasks[t].name + "' but " + std::to_string(p.out) + " × " +
                          std::to_string(p.in) + " in task '" + tasks[0].name +
                          "': adapters for different base shapes");
      p.rank = std::max(p.rank, m->rank);
      p.per_task.push_back(m);
      p.task_ranks.push_back(m->rank);
    }
  }
  return plan;
}

}  // namespace

namespace {

// Converts a tensor into `out` (its numel floats), multiplied by `scale`, and refuses
// non-finite values by file, tensor and index unless allowed (the caller drops its pages from
// the resident set). One vectorisable pass checks and scales: x · 0 is NaN exactly for NaN and
// ±Inf, so the sum flags any; only then is the element searched for.
std::uint64_t read_into(const PeftAdapter& ad, const std::string& tensor, bool allow_nonfinite,
                        std::span<float> out, float scale = 1.0f) {
  const auto& file = ad.weights();
  const auto& info = file.at(tensor);
  file.read(info, out);
  float flag = 0.0f;
  if (scale != 1.0f)
    for (float& x : out) flag += x * 0.0f, x *= scale;
  else
    for (const float x : out) flag += x * 0.0f;
  if (!allow_nonfinite && !std::isfinite(flag)) {
    file.read(info, out);  // as stored, to name the element
    for (std::size_t i = 0; i < out.size(); ++i)
      if (!std::isfinite(out[i]))
        throw format_error(file.path().string() + ": tensor '" + tensor +
                           "' holds a non-finite value (" + std::to_string(out[i]) +
                           ") at element " + std::to_string(i) +
                           " (pass --allow-nonfinite to merge it anyway)");
  }
  return info.end - info.begin;
}

std::vector<float> read_factor(const PeftAdapter& a, const std::string& tensor, bool allow_nonfinite) {
  const auto& info = a.weights().at(tensor);
  std::vector<float> v(info.numel());
  read_into(a, tensor, allow_nonfinite, v);
  a.weights().evict(info);
  return v;
}

}  // namespace

std::vector<TaskFactors> read_module_factors(const AdapterSet& set, const PlannedModule& pm) {
  std::vector<TaskFactors> f;
  for (std::size_t t = 0; t < pm.per_task.size(); ++t) {
    const auto& m = *pm.per_task[t];
    f.push_back({read_factor(*set.adapters[t], m.key_a, false),
                 read_factor(*set.adapters[t], m.key_b, false), m.rank, m.scale});
  }
  return f;
}

void check_task_names(const std::vector<TaskSource>& tasks) {
  std::map<std::string, const TaskSource*> names;
  for (const auto& t : tasks) {
    if (t.name.empty()) throw usage_error(t.adapter.string() + ": task name is empty");
    const auto [it, fresh] = names.emplace(t.name, &t);
    if (!fresh)
      throw usage_error("task name '" + t.name + "' is used twice (" + it->second->adapter.string() +
                        " and " + t.adapter.string() + "); give each task its own name: NAME=PATH " +
                        "on the command line (e.g. " + t.name + "2=" + t.adapter.string() +
                        "), or 'name' in --config");
  }
}

AdapterSet open_adapter_set(const std::vector<TaskSource>& tasks) {
  AdapterSet set;
  for (const auto& t : tasks) set.adapters.push_back(std::make_unique<PeftAdapter>(t.adapter));
  set.plan = plan_modules(tasks, set.adapters);
  return set;
}

}  // namespace revmerge
