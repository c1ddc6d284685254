#include "methods/adapter_set.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <map>

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Every module any task adapts, sorted by (layer, name), matched across the tasks.
std::vector<PlannedModule> plan_modules(const std::vector<TaskSource>& tasks,
                                        const std::vector<std::unique_ptr<PeftAdapter>>& adapters,
                                        MissingModules missing) {
  std::map<std::string, std::size_t> first_task;  // module path → the first task adapting it
  std::vector<PlannedModule> plan;
  for (std::size_t t = 0; t < adapters.size(); ++t) {
    const auto& a = *adapters[t];
    if (a.config().fan_in_fan_out != adapters[0]->config().fan_in_fan_out)
      throw shape_error(a.dir().string() + ": fan_in_fan_out differs from " +
                        adapters[0]->dir().string() + "; the adapters are for different bases");
    for (const auto& m : a.modules())
      if (first_task.emplace(m.path, t).second)
        plan.push_back({m.path, m.layer, m.name, m.in, m.out, 0, {}, {}});
  }
  std::stable_sort(plan.begin(), plan.end(), [](const PlannedModule& x, const PlannedModule& y) {
    return x.layer != y.layer ? x.layer < y.layer : x.name < y.name;
  });
  for (auto& p : plan) {
    const auto first = first_task.at(p.path);
    for (std::size_t t = 0; t < adapters.size(); ++t) {
      const auto& a = *adapters[t];
      const auto* m = a.find(p.path);
      if (!m && missing == MissingModules::refuse)
        throw shape_error(a.dir().string() + ": module '" + p.path + "' of task '" +
                          tasks[first].name + "' (" + adapters[first]->dir().string() +
                          ") is missing from task '" + tasks[t].name +
                          "'; RMM merges tasks that adapt the same modules (the classic methods "
                          "take a missing module as a zero delta)");
      if (m && (m->in != p.in || m->out != p.out))
        throw shape_error(a.dir().string() + ": module '" + p.path + "' is " +
                          std::to_string(m->out) + " × " + std::to_string(m->in) + " in task '" +
                          tasks[t].name + "' but " + std::to_string(p.out) + " × " +
                          std::to_string(p.in) + " in task '" + tasks[first].name +
                          "': adapters for different base shapes");
      p.rank = std::max(p.rank, m ? m->rank : 0);
      p.per_task.push_back(m);
      p.task_ranks.push_back(m ? m->rank : 0);
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

BundleModule module_entry(const PlannedModule& pm) {
  BundleModule bm;
  bm.path = pm.path;
  bm.layer = pm.layer;
  bm.name = pm.name;
  bm.in = pm.in;
  bm.out = pm.out;
  bm.rank = pm.rank;
  bm.task_ranks = pm.task_ranks;
  for (const auto* m : pm.per_task) bm.task_scales.push_back(m ? m->scale : 1.0);
  return bm;
}

std::vector<TaskFactors> read_module_factors(const AdapterSet& set, const PlannedModule& pm) {
  std::vector<TaskFactors> f;
  for (std::size_t t = 0; t < pm.per_task.size(); ++t) {
    if (pm.per_task[t] == nullptr) {
      f.push_back({std::vector<float>(static_cast<std::size_t>(pm.rank * pm.in), 0.0f),
                   std::vector<float>(static_cast<std::size_t>(pm.out * pm.rank), 0.0f), pm.rank, 1.0});
      continue;
    }
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

std::vector<std::filesystem::path> task_folders(const std::vector<TaskSource>& tasks) {
  std::vector<std::filesystem::path> folders;
  for (const auto& t : tasks) folders.push_back(t.adapter), folders.push_back(t.origin);
  return folders;
}

AdapterSet open_adapter_set(const std::vector<TaskSource>& tasks, MissingModules missing) {
  AdapterSet set;
  for (const auto& t : tasks) set.adapters.push_back(std::make_unique<PeftAdapter>(t.adapter));
  set.plan = plan_modules(tasks, set.adapters, missing);
  set.missing.assign(tasks.size(), 0);
  for (const auto& pm : set.plan)
    for (std::size_t t = 0; t < pm.per_task.size(); ++t) set.missing[t] += pm.per_task[t] == nullptr;
  return set;
}

std::string differing_base_models(const std::vector<std::string>& names, const std::vector<std::string>& bases) {
  // Base name → the tasks naming it, in the order first seen.
  std::vector<std::pair<std::string, std::vector<std::string>>> groups;
  for (std::size_t t = 0; t < bases.size(); ++t) {
    auto base = bases[t];
    while (base.size() > 1 && base.back() == '/') base.pop_back();
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == base; });
    if (it == groups.end()) it = groups.insert(groups.end(), {base, {}});
    it->second.push_back(names[t]);
  }
  if (groups.size() < 2) return {};
  std::string text = "the tasks name different base models:";
  for (std::size_t g = 0; g < groups.size(); ++g) {
    text += g == 0 ? " " : g + 1 == groups.size() ? " and " : ", ";
    text += fmt::format("'{}' ({})", groups[g].first.empty() ? "(none)" : groups[g].first,
                        fmt::join(groups[g].second, ", "));
  }
  return text + "; merged anyway, as their modules have the same shapes";
}

std::vector<std::string> adapter_set_warnings(const std::vector<TaskSource>& tasks, const AdapterSet& set) {
  std::vector<std::string> out;
  std::vector<std::string> names, bases;
  for (const auto& t : tasks) names.push_back(t.name);
  for (const auto& a : set.adapters) bases.push_back(a->config().base_model_name_or_path);
  if (auto text = differing_base_models(names, bases); !text.empty()) out.push_back(std::move(text));
  for (std::size_t t = 0; t < tasks.size(); ++t)
    if (set.missing[t] != 0)
      out.push_back("task '" + tasks[t].name + "' does not adapt " + std::to_string(set.missing[t]) +
                    " of the " + std::to_string(set.plan.size()) +
                    " modules the tasks adapt; merged as a zero delta there");
  return out;
}

}  // namespace revmerge
