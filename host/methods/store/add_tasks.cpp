// revmerge add: more tasks in an existing bundle without touching its tasks' bytes — each new
// task kept per module as its own truncation within the module's error target, appended to the
// module's "added" tensors.
#include <system_error>
#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "core/atomic_output.hpp"
#include "core/interrupt.hpp"
#include "methods/adapter_set.hpp"
#include "methods/recipe.hpp"
#include "methods/rmm_pipeline.hpp"
#include "methods/store/parallel_tasks.hpp"
#include "methods/store/truncation.hpp"
#include "revmerge/error.hpp"
#include "revmerge/store.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// A stored tensor of `bundle` as f32, from whichever of its files holds it.
std::vector<float> read_f32(const Bundle& bundle, const std::string& name) {
  return bundle.tensors().at(name).file->read_f32(name);
}

// Every bundle module in the adapters with the same shape, and no adapter module outside the
// bundle; the new tasks' ranks at most the module's.
void check_modules(const BundleManifest& man, const AdapterSet& set, const std::filesystem::path& bundle) {
  std::map<std::string, const PlannedModule*> planned;
  for (const auto& pm : set.plan) planned[pm.path] = &pm;
  for (const auto& mod : man.modules) {
    const auto it = planned.find(mod.path);
    if (it == planned.end())
      throw shape_error("module '" + mod.path + "' of " + bundle.string() +
                        " is missing from the adapters to add");
    const auto& pm = *it->second;
    if (pm.in != mod.in || pm.out != mod.out)
      throw shape_error("module '" + mod.path + "': the adapters adapt a " + std::to_string(pm.out) +
                        " × " + std::to_string(pm.in) + " weight, the bundle a " +
                        std::to_string(mod.out) + " × " + std::to_string(mod.in) + " one");
    if (pm.rank > mod.rank)
      throw shape_error("module '" + mod.path + "': an adapter to add has rank " + std::to_string(pm.rank) +
                        ", above the bundle's " + std::to_string(mod.rank) +
                        " (its tasks revert at that rank)");
    planned.erase(it);
  }
  if (!planned.empty())
    throw shape_error("module '" + planned.begin()->first + "' of the adapters to add is not in " +
                      bundle.string());
}

// The error target of one module: the bound given, or the worst delta error of its tasks.
double module_target(const BundleModule& mod, const std::optional<double>& bound) {
  if (bound) return *bound;
  double worst = 0;
  for (const double e : mod.delta_error)
    if (!std::isnan(e)) worst = std::max(worst, e);
  return worst;
}

// The fewest directions whose truncation keeps the relative error within `target` (before
// rounding: Σ of the dropped σ² ≤ target² ‖ΔW‖²).
i64 directions_for(const TaskTruncation& t, double target) {
  const double allowed = target * target * t.norm_sq;
  double tail = 0;
  for (const double s : t.sigma_sq) tail += s;
  i64 k = 0;
  while (k < static_cast<i64>(t.sigma_sq.size()) && tail > allowed) tail -= t.sigma_sq[k++];
  return k;
}

}  // namespace

BundleManifest add_tasks(const AddTasksOptions& o) {
  if (o.tasks.empty()) throw usage_error("add: no adapters to add");
  if (o.out.empty()) throw usage_error("--out: no bundle folder given");
  if (o.overwrite) {
    // The bundle itself may be the output (an update in place, atomic); a folder holding it not.
    auto inputs = task_folders(o.tasks);
    std::error_code ec;
    if (!std::filesystem::equivalent(o.out, o.bundle, ec)) inputs.push_back(o.bundle);
    refuse_replacing_inputs(o.out, inputs);
  }
  if (o.max_error && !(*o.max_error >= 0 && *o.max_error < 1))
    throw usage_error("--max-error " + std::to_string(*o.max_error) + ": a relative delta error is in [0, 1)");
  const Bundle old(o.bundle);
  const auto& before = old.manifest();
  {
    std::vector<TaskSource> names;
    for (const auto& t : before.tasks) names.push_back({t.name, t.source});
    names.insert(names.end(), o.tasks.begin(), o.tasks.end());
    check_task_names(names);
  }
  const auto set = open_adapter_set(o.tasks);
  check_modules(before, set, o.bundle);
  if (set.adapters[0]->config().fan_in_fan_out != before.fan_in_fan_out)
    throw shape_error(set.adapters[0]->dir().string() + ": fan_in_fan_out is " +
                      (before.fan_in_fan_out ? "false" : "true") + ", and the bundle's tasks' is " +
                      (before.fan_in_fan_out ? "true" : "false") + " (adapters of another kind of base weights)");
  std::map<std::string, const PlannedModule*> planned;
  for (const auto& pm : set.plan) planned[pm.path] = &pm;

  BundleManifest man = before;
  man.format_version = 2;
  man.base_tasks = before.represented_tasks();
  const DType storage = before.dtype;
  for (std::size_t t = 0; t < o.tasks.size(); ++t)
    man.tasks.push_back({o.tasks[t].name, o.tasks[t].adapter.string(),
                         set.adapters[t]->config().base_model_name_or_path,
                         set.adapters[t]->config().task_type});

  // Each module's new truncations first (their sizes fix the tensors' shapes).
  struct NewFactors {
    std::vector<std::vector<float>> a, b;
  };
  std::vector<NewFactors> fresh(man.modules.size());
  const auto steps = man.modules.size();
  for (std::size_t m = 0; m < man.modules.size(); ++m) {
    throw_if_interrupted("add");
    auto& mod = man.modules[m];
    if (o.progress) o.progress(m, steps, mod.path);
    const auto& pm = *planned.at(mod.path);
    const auto f = read_module_factors(set, pm);
    const double target = module_target(before.modules[m], o.max_error);
    const auto n = f.size();
    auto& nf = fresh[m];
    nf.a.resize(n), nf.b.resize(n);
    std::vector<i64> kept(n);
    std::vector<double> error(n), norm(n);
    parallel_tasks(static_cast<long>(n), o.threads, [&](long t) {
      const auto wide = widen_factors(f[t]);
      const auto tt = task_truncation(f[t], wide, pm.out, pm.in);
      kept[t] = directions_for(tt, target);
      truncated_factors(tt, wide, kept[t], nf.b[t], nf.a[t]);
      round_to_storage(nf.a[t], storage);
      round_to_storage(nf.b[t], storage);
      norm[t] = std::sqrt(tt.norm_sq);
      const double e = truncation_error_sq(f[t], wide, pm.out, pm.in, tt.norm_sq, nf.b[t], nf.a[t], kept[t]);
      error[t] = tt.norm_sq > 0 ? std::sqrt(e / tt.norm_sq) : 0.0;
    });
    for (std::size_t t = 0; t < n; ++t) {
      mod.task_ranks.push_back(f[t].rank);
      if (!mod.task_scales.empty()) mod.task_scales.push_back(f[t].scale);
      mod.added_kept_ranks.push_back(kept[t]);
      mod.delta_error.push_back(error[t]);
      mod.delta_norm.push_back(norm[t]);
    }
  }

  // The tensors: every existing one copied, the "added" ones grown.
  const auto added_name = [](const BundleModule& mod, const char* side) {
    return bundle_tensor_name(mod.path, side, "added");
  };
  std::set<std::string> grown;
  std::vector<TensorSpec> specs;
  for (const auto& mod : man.modules) {
    i64 k = 0;
    for (const auto x : mod.added_kept_ranks) k += x;
    if (k == 0) continue;
    specs.push_back({added_name(mod, "lora_A"), storage, {k, mod.in}});
    specs.push_back({added_name(mod, "lora_B"), storage, {mod.out, k}});
    grown.insert(specs[specs.size() - 2].name);
    grown.insert(specs.back().name);
  }
  for (const auto& [_, info] : old.tensors().tensors())
    if (!grown.count(info->name)) specs.push_back({info->name, info->dtype, info->shape});

  StagedDir staged(o.out, o.overwrite);
  SafetensorsWriter writer(staged.path() / kBundleTensorsName, specs,
                           {{"format", "revmerge-bundle"}, {"method", man.method}});
  for (const auto& [file, info] : old.tensors().tensors())
    if (!grown.count(info->name)) writer.write(info->name, file->bytes(*info));
  for (std::size_t m = 0; m < man.modules.size(); ++m) {
    const auto& mod = man.modules[m];
    const auto& was = before.modules[m];
    i64 k_old = 0, k_new = 0;
    for (const auto x : was.added_kept_ranks) k_old += x;
    for (const auto x : mod.added_kept_ranks) k_new += x;
    if (k_new == 0) continue;
    const auto& nf = fresh[m];
    // A: the old rows, then each new task's; B: each row's old columns, then the new ones.
    std::vector<float> a, b(static_cast<std::size_t>(mod.out * k_new));
    if (k_old) a = read_f32(old, added_name(was, "lora_A"));
    for (const auto& rows : nf.a) a.insert(a.end(), rows.begin(), rows.end());
    std::vector<float> b_old;
    if (k_old) b_old = read_f32(old, added_name(was, "lora_B"));
    for (i64 row = 0; row < mod.out; ++row) {
      auto* dst = b.data() + row * k_new;
      if (k_old) dst = std::copy(b_old.begin() + row * k_old, b_old.begin() + (row + 1) * k_old, dst);
      for (std::size_t t = 0; t < nf.b.size(); ++t) {
        const i64 k = mod.added_kept_ranks[was.added_kept_ranks.size() + t];
        dst = std::copy(nf.b[t].begin() + row * k, nf.b[t].begin() + (row + 1) * k, dst);
      }
    }
    writer.write_f32(added_name(mod, "lora_A"), a);
    writer.write_f32(added_name(mod, "lora_B"), b);
  }
  old.tensors().check_intact();

  double stored = 0, raw = 0;
  for (auto& mod : man.modules) {
    double mod_raw = 0;
    for (const auto r : mod.task_ranks) mod_raw += double(r) * double(mod.in + mod.out);
    mod.storage_ratio = double(mod.stored_numbers(man.base_tasks)) / mod_raw;
    stored += double(mod.stored_numbers(man.base_tasks));
    raw += mod_raw;
  }
  man.storage_ratio = raw > 0 ? stored / raw : 0;
  man.input_bytes += adapter_source(set).factor_bytes;
  man.stored_bytes = 0;
  for (const auto& spec : specs) man.stored_bytes += spec.nbytes();
  if (o.progress) o.progress(steps, steps, "");
  throw_if_interrupted("add");
  writer.commit();
  write_file_atomic(staged.path() / kBundleManifestName, manifest_to_json(man), false);
  RecipeRecord record{"add", {}, recipe_inputs(o.tasks)};
  record.inputs.insert(record.inputs.begin(), {"bundle", o.bundle});
  record.parameters.emplace_back("max_error", o.max_error ? std::to_string(*o.max_error)
                                                          : "per module, its tasks' worst (not given)");
  write_file_atomic(staged.path() / kRecipeName, recipe_text(o.recipe, record), false);
  staged.commit();
  return man;
}

}  // namespace revmerge
