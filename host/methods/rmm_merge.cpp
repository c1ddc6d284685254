// revmerge merge --method rmm: plan the modules across adapters, run RMM module by module, and
// write the bundle atomically.
#include <chrono>
#include <future>
#include <map>
#include <set>

#include "backend/backend.hpp"
#include "backend/registry.hpp"
#include "core/atomic_output.hpp"
#include "core/interrupt.hpp"
#include "core/memory_info.hpp"
#include "methods/adapter_set.hpp"
#include "methods/rmm_pipeline.hpp"
#include "scheduler/memory_plan.hpp"
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


double seconds_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

std::string backend_description(Device device, int threads, int gpu) {
  return make_backend(device, {threads, gpu})->name();
}

BundleManifest merge_rmm(const RmmMergeOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  check_options(o);
  // A GPU backend takes a moment to start (context, cuBLAS, cuSOLVER): it starts while the
  // adapters are opened and checked.
  auto starting_backend = std::async(std::launch::async, [&] {
    return make_backend(o.device, {o.threads, o.gpu});
  });
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

  auto backend = starting_backend.get();
  manifest.backend = backend->name();
  PipelineStats local;
  PipelineStats& stats = o.stats ? *o.stats : local;
  stats = {};

  // The memory plan comes first: a budget too small for one module is refused before any
  // output exists.
  std::vector<TensorSpec> specs;
  for (const auto& pm : plan)
    for (const auto& [side, m] : {std::pair{"lora_A", pm.in}, std::pair{"lora_B", pm.out}}) {
      specs.push_back({bundle_tensor_name(pm.path, side, "mean"), o.dtype, {m, pm.rank}});
      specs.push_back({bundle_tensor_name(pm.path, side, "basis"), o.dtype, {m, pm.rank, p}});
      specs.push_back({bundle_tensor_name(pm.path, side, "coef"), o.dtype, {m, p, n}});
    }
  const bool shared = backend->shares_host_memory();
  const std::uint64_t host_budget =
      o.memory_budget ? o.memory_budget : host_memory_available() / 2;
  const std::uint64_t device_budget =
      shared ? 0 : (o.memory_budget ? o.memory_budget : backend->memory_available() / 10 * 9);
  const auto mem = plan_memory(largest_module_memory(o, set, *backend), host_budget,
                               device_budget, "--memory-budget");
  stats.host_budget = mem.host_budget;
  stats.device_budget = mem.device_budget;
  stats.planned_host_bytes = mem.host_bytes;
  stats.planned_device_bytes = mem.device_bytes;
  stats.staging_slots = o.sequential ? 1 : mem.staging_slots;
  stats.pipelined = !o.sequential;

  StagedDir staged(o.out, o.overwrite);
  SafetensorsWriter writer(staged.path() / kBundleTensorsName, specs,
                           {{"format", "revmerge-bundle"}, {"method", "rmm"}});
  const auto pipeline_start = std::chrono::steady_clock::now();
  stats.setup_seconds = seconds_between(start, pipeline_start);
  run_rmm_modules(o, set, *backend, mem, writer, manifest, stats);
  const auto pipeline_end = std::chrono::steady_clock::now();
  stats.pipeline_seconds = seconds_between(pipeline_start, pipeline_end);

  double stored = 0, raw = 0;
  for (const auto& bm : manifest.modules) {
    double task_raw = 0;
    for (auto rk : bm.task_ranks) task_raw += double(rk) * double(bm.in + bm.out);
    raw += task_raw;
    stored += bm.storage_ratio * task_raw;
  }
  manifest.storage_ratio = raw > 0 ? stored / raw : 0;
  throw_if_interrupted("merge");
  writer.commit();
  write_file_atomic(staged.path() / kBundleManifestName, manifest_to_json(manifest), false);
  staged.commit();
  stats.bytes_written = writer.file_size();
  stats.backend_peak_bytes = backend->memory_use().peak;
  const auto end = std::chrono::steady_clock::now();
  stats.finish_seconds = seconds_between(pipeline_end, end);
  stats.seconds = seconds_between(start, end);
  return manifest;
}

BundleManifest merge_rmm_models(RmmMergeOptions o, const FullModelInputs& in) {
  check_options(o);
  if (in.base.empty()) throw usage_error("--base: full fine-tunes are merged as task vectors; give the base model");
  if (in.rank < 1) throw usage_error("--rank: full fine-tunes are compressed to this rank first; give it");
  // Scratch beside the output (same file system), removed whatever happens.
  std::string scratch_name = o.out.filename().string();  // ".NAME.compress"
  scratch_name.insert(0, 1, '.');
  scratch_name += ".compress";
  StagedDir scratch(o.out.parent_path() / scratch_name, true);
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
