// revmerge merge --method rmm: plan the modules across adapters, run RMM module by module, and
// write the bundle atomically.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <set>

#include "backend/backend.hpp"
#include "backend/registry.hpp"
#include "core/atomic_output.hpp"
#include "core/interrupt.hpp"
#include "methods/adapter_set.hpp"
#include "methods/rmm_module.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/compress.hpp"
#include "revmerge/version.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

void check_options(const RmmMergeOptions& o) {
  const auto n = static_cast<i64>(o.tasks.size());
  if (n < 2)
    throw usage_error("RMM needs at least 2 adapters to merge, got " + std::to_string(n) +
                      " (a single adapter is already its own reversible form)");
  if (o.basis < 1 || o.basis > n - 1)
    throw usage_error("--basis " + std::to_string(o.basis) + " is outside 1 .. n − 1 = " +
                      std::to_string(n - 1) + " for " + std::to_string(n) + " adapters (" +
                      std::to_string(n - 1) + " already reconstructs every task exactly)");
  std::set<std::string> names;
  for (const auto& t : o.tasks) {
    if (t.name.empty()) throw usage_error(t.adapter.string() + ": task name is empty");
    if (!names.insert(t.name).second)
      throw usage_error("task name '" + t.name + "' is used twice; give each task its own name");
  }
  if (o.out.empty()) throw usage_error("--out: no bundle folder given");
  if (!is_float_dtype(o.dtype) || o.dtype == DType::F64)
    throw usage_error("--dtype: a bundle stores f32, f16 or bf16");
}

BundleModule describe(const PlannedModule& pm, const RmmModuleResult& res, i64 n, i64 p) {
  BundleModule bm;
  bm.path = pm.path;
  bm.layer = pm.layer;
  bm.name = pm.name;
  bm.in = pm.in;
  bm.out = pm.out;
  bm.rank = pm.rank;
  double raw = 0;
  for (const auto* m : pm.per_task) {
    bm.task_ranks.push_back(m->rank);
    raw += static_cast<double>(m->rank) * static_cast<double>(pm.in + pm.out);
  }
  const double stored = static_cast<double>(pm.in + pm.out) * double(p * (pm.rank + n) + pm.rank);
  bm.storage_ratio = stored / raw;
  bm.factor_error_a = res.a.factor_error;
  bm.factor_error_b = res.b.factor_error;
  bm.delta_error = res.delta_error;
  bm.delta_norm = res.delta_norm;
  bm.spectrum_a = res.a.spectrum;
  bm.spectrum_b = res.b.spectrum;
  return bm;
}

}  // namespace

std::string backend_description(Device device, int threads, int gpu) {
  return make_backend(device, {threads, gpu})->name();
}

BundleManifest merge_rmm(const RmmMergeOptions& o) {
  check_options(o);
  const auto set = open_adapter_set(o.tasks);
  const auto& adapters = set.adapters;
  const auto& plan = set.plan;
  const i64 n = static_cast<i64>(o.tasks.size()), p = o.basis;

  BundleManifest manifest;
  manifest.basis = p;
  manifest.dtype = o.dtype;
  manifest.created_by = std::string("revmerge ") + REVMERGE_VERSION_STRING;
  for (std::size_t t = 0; t < o.tasks.size(); ++t)
    manifest.tasks.push_back({o.tasks[t].name,
                              (o.tasks[t].origin.empty() ? o.tasks[t].adapter : o.tasks[t].origin).string(),
                              adapters[t]->config().base_model_name_or_path,
                              adapters[t]->config().task_type});

  StagedDir staged(o.out, o.overwrite);
  std::vector<TensorSpec> specs;
  for (const auto& pm : plan)
    for (const auto& [side, m] : {std::pair{"lora_A", pm.in}, std::pair{"lora_B", pm.out}}) {
      specs.push_back({bundle_tensor_name(pm.path, side, "mean"), o.dtype, {m, pm.rank}});
      specs.push_back({bundle_tensor_name(pm.path, side, "basis"), o.dtype, {m, pm.rank, p}});
      specs.push_back({bundle_tensor_name(pm.path, side, "coef"), o.dtype, {m, p, n}});
    }
  SafetensorsWriter writer(staged.path() / kBundleTensorsName, specs,
                           {{"format", "revmerge-bundle"}, {"method", "rmm"}});

  auto backend = make_backend(o.device, {o.threads, o.gpu});
  manifest.backend = backend->name();
  std::vector<float> a, b;
  double stored = 0, raw = 0;
  for (std::size_t i = 0; i < plan.size(); ++i) {
    throw_if_interrupted("merge");
    const auto& pm = plan[i];
    load_stacks(pm, adapters, o.allow_nonfinite, a, b);
    const auto res = with_module_context(pm.path, [&] {
      return rmm_module(*backend, {n, pm.rank, pm.in, pm.out, p}, a.data(), b.data(), o.dtype, {});
    });
    for (const auto& [side, part] : {std::pair{"lora_A", &res.a}, std::pair{"lora_B", &res.b}}) {
      writer.write_f32(bundle_tensor_name(pm.path, side, "mean"), part->mean);
      writer.write_f32(bundle_tensor_name(pm.path, side, "basis"), part->basis);
      writer.write_f32(bundle_tensor_name(pm.path, side, "coef"), part->coef);
    }
    manifest.modules.push_back(describe(pm, res, n, p));
    const auto& bm = manifest.modules.back();
    double task_raw = 0;
    for (auto rk : bm.task_ranks) task_raw += double(rk) * double(pm.in + pm.out);
    raw += task_raw;
    stored += bm.storage_ratio * task_raw;
    if (o.progress) o.progress(i + 1, plan.size(), pm.path);
  }
  manifest.storage_ratio = raw > 0 ? stored / raw : 0;
  throw_if_interrupted("merge");
  writer.commit();
  write_file_atomic(staged.path() / kBundleManifestName, manifest_to_json(manifest), false);
  staged.commit();
  return manifest;
}

BundleManifest merge_rmm_models(RmmMergeOptions o, const FullModelInputs& in) {
  check_options(o);
  if (in.base.empty()) throw usage_error("--base: full fine-tunes are merged as task vectors; give the base model");
  if (in.rank < 1) throw usage_error("--rank: full fine-tunes are compressed to this rank first; give it");
  // Scratch beside the output (same file system), removed whatever happens.
  StagedDir scratch(o.out.parent_path() / ("." + o.out.filename().string() + ".compress"), true);
  for (auto& t : o.tasks) {
    CompressOptions c;
    c.base = in.base;
    c.model = t.adapter;
    c.rank = in.rank;
    c.oversampling = in.oversampling;
    c.power_iterations = in.power_iterations;
    c.out = scratch.path() / t.name;
    c.threads = o.threads;
    compress_checkpoint(c);
    t.origin = t.adapter;
    t.adapter = c.out;
  }
  return merge_rmm(o);
}

}  // namespace revmerge
