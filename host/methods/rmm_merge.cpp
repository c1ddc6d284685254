// revmerge merge --method rmm: plan the modules across adapters (or full fine-tunes, compressed
// as they are read), run RMM module by module through the pipeline, and write the bundle
// atomically.
#include <algorithm>
#include <chrono>
#include <future>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "backend/backend.hpp"
#include "backend/registry.hpp"
#include "core/atomic_output.hpp"
#include "core/interrupt.hpp"
#include "core/memory_info.hpp"
#include "distributed/agreement.hpp"
#include "distributed/shared_bundle.hpp"
#include "methods/adapter_set.hpp"
#include "methods/full_model_source.hpp"
#include "methods/lowrank/batched_pt_svd.hpp"
#include "methods/on_backend.hpp"
#include "methods/recipe.hpp"
#include "methods/rmm_pipeline.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/version.hpp"
#include "scheduler/memory_plan.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

void check_options(const RmmMergeOptions& o, const std::filesystem::path& base = {}) {
  const auto n = static_cast<i64>(o.tasks.size());
  if (n < 2)
    throw usage_error("RMM needs at least 2 adapters to merge, got " + std::to_string(n) +
                      " (a single adapter is already its own reversible form)");
  if (o.basis < 1 || o.basis > n - 1)
    throw usage_error("--basis " + std::to_string(o.basis) + " is outside 1 .. n − 1 = " +
                      std::to_string(n - 1) + " for " + std::to_string(n) + " adapters (" +
                      std::to_string(n - 1) + " already reconstructs every task exactly)");
  check_task_names(o.tasks);
  if (o.out.empty()) throw usage_error("--out: no bundle folder given");
  if (o.overwrite) {
    auto inputs = task_folders(o.tasks);
    inputs.push_back(base);
    refuse_replacing_inputs(o.out, inputs);
  }
  if (o.dtype && (!is_float_dtype(*o.dtype) || *o.dtype == DType::F64))
    throw usage_error("--dtype: a bundle stores f32, f16 or bf16");
}

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// A GPU backend takes a moment to start (context, cuBLAS, cuSOLVER): it starts while the inputs
// are opened and checked.
std::future<std::unique_ptr<Backend>> start_backend(const BackendFactory& make) {
  return std::async(std::launch::async, make);
}

BackendFactory backend_of(const RmmMergeOptions& o) {
  return [&o] { return make_backend(o.device, {o.threads, o.gpu}); };
}

BundleManifest new_manifest(const RmmMergeOptions& o) {
  BundleManifest manifest;
  manifest.basis = o.basis;
  manifest.created_by = std::string("revmerge ") + REVMERGE_VERSION_STRING;
  return manifest;
}

// The merge of `source` into the bundle at o.out: memory plan, the streamed pipeline, commit.
// The stored dtype: the option, or the inputs' (F64 inputs are stored as F32).
DType storage_dtype(const RmmMergeOptions& o, const RmmSource& source) {
  if (o.dtype) return *o.dtype;
  return source.input_dtype == DType::F64 ? DType::F32 : source.input_dtype;
}

// The method and parameters for the bundle's recipe; full fine-tunes add their compression.
RecipeRecord rmm_record(const RmmMergeOptions& o, DType storage, const FullModelInputs* full) {
  RecipeRecord r{"rmm", {{"basis", std::to_string(o.basis)}}, recipe_inputs(o.tasks)};
  r.parameters.emplace_back("dtype", std::string(dtype_name(storage)) +
                                         (o.dtype ? "" : " (not given: the inputs')"));
  r.parameters.emplace_back("allow_nonfinite", o.allow_nonfinite ? "true" : "false");
  if (full) {
    r.parameters.emplace_back("base", full->base.string());
    r.parameters.emplace_back("rank", std::to_string(full->rank));
    r.parameters.emplace_back("oversampling", std::to_string(full->oversampling));
    r.parameters.emplace_back("power_iterations", std::to_string(full->power_iterations));
  }
  return r;
}

// This worker's modules of `source` (all of them without peers), balanced by staged bytes.
RmmSource share_of_source(const RmmSource& source, Peers* peers) {
  if (!peers) return source;
  std::vector<std::uint64_t> bytes;
  for (const auto& pm : source.plan) bytes.push_back(source.staged_bytes(pm));
  const auto [first, last] = share_of(bytes, peers->rank(), peers->size());
  RmmSource mine = source;
  mine.plan.assign(source.plan.begin() + static_cast<std::ptrdiff_t>(first),
                   source.plan.begin() + static_cast<std::ptrdiff_t>(last));
  mine.bytes_total = 0;
  for (std::size_t i = first; i < last; ++i) mine.bytes_total += bytes[i];
  return mine;
}

BundleManifest merge_source(const RmmMergeOptions& o, const RmmSource& source,
                            BundleManifest manifest, Backend& backend, Clock::time_point start,
                            const FullModelInputs* full) {
  Peers* const peers = several(o.peers);
  const auto& plan = source.plan;
  const i64 n = static_cast<i64>(o.tasks.size()), p = o.basis;
  const DType storage = storage_dtype(o, source);
  manifest.dtype = storage;
  manifest.backend = backend.name();
  PipelineStats local;
  PipelineStats& stats = o.stats ? *o.stats : local;
  stats = {};
  // Every tensor of the bundle, whichever worker writes it: the file's layout.
  std::vector<TensorSpec> specs;
  for (const auto& pm : plan)
    for (const auto& [side, m] : {std::pair{"lora_A", pm.in}, std::pair{"lora_B", pm.out}}) {
      specs.push_back({bundle_tensor_name(pm.path, side, "mean"), storage, {m, pm.rank}});
      specs.push_back({bundle_tensor_name(pm.path, side, "basis"), storage, {m, pm.rank, p}});
      specs.push_back({bundle_tensor_name(pm.path, side, "coef"), storage, {m, p, n}});
    }
  const RmmSource mine = share_of_source(source, peers);
  std::optional<BundleShards> shards;
  if (o.shard_per_rank) {
    shards.emplace();
    for (const auto& pm : plan) shards->module_paths.push_back(pm.path), shards->module_bytes.push_back(source.staged_bytes(pm));
  }
  std::optional<MemoryPlan> mem;
  // The memory plan comes first: a budget too small for one module is refused before any
  // output exists.
  SharedBundle bundle(peers, o.out, o.overwrite, specs, {{"format", "revmerge-bundle"}, {"method", "rmm"}}, [&] {
    const bool shared = backend.shares_host_memory();
    const std::uint64_t host_budget = o.memory_budget ? o.memory_budget : host_memory_available() / 2;
    const std::uint64_t device_budget =
        shared ? 0 : (o.memory_budget ? o.memory_budget : backend.memory_available() / 10 * 9);
    auto item = largest_module_memory(o, storage, source, backend);
    if (!shared && source.device_load_bytes) {
      // Full fine-tunes compressed on the device: as many tasks per batch as leave the merge
      // itself its minimum (one task at least; the plan refuses what even that cannot fit).
      const std::uint64_t rest =
          std::uint64_t(item.in_flight) * (item.work + item.device_inputs) + 2 * item.device_inputs;
      i64 tasks = n;
      while (tasks > 1 && rest + source.device_load_bytes(tasks) > device_budget) --tasks;
      item.device_read_work = source.device_load_bytes(tasks);
      source.limit_device_load(item.device_read_work);
    }
    mem = plan_memory(item, host_budget, device_budget, "--memory-budget");
  }, shards);
  stats.host_budget = mem->host_budget;
  stats.device_budget = mem->device_budget;
  stats.planned_host_bytes = mem->host_bytes;
  stats.planned_device_bytes = mem->device_bytes;
  stats.staging_slots = o.sequential ? 1 : mem->staging_slots;
  stats.pipelined = !o.sequential;

  const auto pipeline_start = Clock::now();
  stats.setup_seconds = seconds_between(start, pipeline_start);
  bundle.write_share([&] {
    if (!mine.plan.empty()) run_rmm_modules(o, storage, mine, backend, *mem, bundle.writer(), manifest, stats);
  });
  const auto pipeline_end = Clock::now();
  stats.pipeline_seconds = seconds_between(pipeline_start, pipeline_end);
  manifest = bundle.gather_modules(manifest);

  double stored = 0, raw = 0;
  for (const auto& bm : manifest.modules) {
    double task_raw = 0;
    for (auto rk : bm.task_ranks) task_raw += double(rk) * double(bm.in + bm.out);
    raw += task_raw;
    stored += bm.storage_ratio * task_raw;
  }
  manifest.storage_ratio = raw > 0 ? stored / raw : 0;
  manifest.input_bytes = source.factor_bytes;
  for (const auto& spec : specs) manifest.stored_bytes += spec.nbytes();
  bundle.commit(manifest, recipe_text(o.recipe, rmm_record(o, storage, full)));
  stats.bytes_written = bundle.bytes_written();
  stats.backend_peak_bytes = backend.memory_use().peak;
  const auto end = Clock::now();
  stats.finish_seconds = seconds_between(pipeline_end, end);
  stats.seconds = seconds_between(start, end);
  return manifest;
}

}  // namespace

std::string backend_description(Device device, int threads, int gpu) {
  return make_backend(device, {threads, gpu})->name();
}

namespace {

// o.gpus: one worker thread per entry (under mpirun, per entry of each rank), each running `run`
// with its own options (GPU, peers, its share of the memory and threads); worker 0's manifest,
// or the error they agreed on.
BundleManifest on_gpus(const RmmMergeOptions& o, const std::function<BundleManifest(const RmmMergeOptions&)>& run) {
  if (o.device == Device::cpu) throw usage_error("--gpus: GPUs for a merge on --device cpu");
  const auto n = static_cast<int>(o.gpus.size());
  const std::uint64_t memory = o.memory_budget ? o.memory_budget : host_memory_available() / 2 / std::uint64_t(n);
  const int threads = o.threads ? o.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / n);
  return on_local_workers<BundleManifest>(n, [&](Peers& peers) {
    RmmMergeOptions w = o;
    w.gpus.clear();
    w.device = Device::cuda;
    w.gpu = o.gpus[static_cast<std::size_t>(peers.rank() % n)];  // this process's entry (nested: rank p·n + i)
    w.peers = &peers;
    w.memory_budget = memory;
    w.threads = threads;
    if (peers.rank() > 0) w.progress = {}, w.pipeline_progress = {}, w.stats = nullptr;  // worker 0 reports
    return run(w);
  }, o.peers);  // under mpirun: every GPU of every rank a worker
}

}  // namespace

BundleManifest merge_rmm(const RmmMergeOptions& o) {
  if (o.gpus.size() > 1) return on_gpus(o, [](const RmmMergeOptions& w) { return merge_rmm_on(w, backend_of(w)); });
  return merge_rmm_on(o, backend_of(o));
}

BundleManifest merge_rmm_models(const RmmMergeOptions& o, const FullModelInputs& in) {
  if (o.gpus.size() > 1)
    return on_gpus(o, [&](const RmmMergeOptions& w) { return merge_rmm_models_on(w, in, backend_of(w)); });
  return merge_rmm_models_on(o, in, backend_of(o));
}

// Each worker opens every input (the plan is everyone's); one that cannot fails them all.
BundleManifest merge_rmm_on(const RmmMergeOptions& o, const BackendFactory& make) {
  if (o.gpus.size() > 1) return on_gpus(o, [&](const RmmMergeOptions& w) { return merge_rmm_on(w, make); });
  const auto start = Clock::now();
  std::unique_ptr<Backend> be;
  std::optional<AdapterSet> set;
  BundleManifest manifest = new_manifest(o);
  agree_on(several(o.peers), [&] {
    check_options(o);
    auto backend = start_backend(make);
    set.emplace(open_adapter_set(o.tasks));
    for (std::size_t t = 0; t < o.tasks.size(); ++t)
      manifest.tasks.push_back({o.tasks[t].name,
                                (o.tasks[t].origin.empty() ? o.tasks[t].adapter : o.tasks[t].origin).string(),
                                set->adapters[t]->config().base_model_name_or_path,
                                set->adapters[t]->config().task_type});
    manifest.fan_in_fan_out = set->adapters[0]->config().fan_in_fan_out;  // the set's, checked equal
    be = backend.get();
  });
  return merge_source(o, adapter_source(*set, o.reader_threads), std::move(manifest), *be, start,
                      nullptr);
}

BundleManifest merge_rmm_models_on(const RmmMergeOptions& o, const FullModelInputs& in,
                                   const BackendFactory& make) {
  const auto start = Clock::now();
  std::unique_ptr<Backend> be;
  std::unique_ptr<FullModelSet> set;
  std::unique_ptr<BatchedPtSvd> engine;
  BundleManifest manifest = new_manifest(o);
  agree_on(several(o.peers), [&] {
    check_options(o, in.base);
    auto backend = start_backend(make);
    set = open_full_model_set(o.tasks, in);
    for (const auto& t : o.tasks) manifest.tasks.push_back({t.name, t.adapter.string(), in.base.string(), ""});
    manifest.fan_in_fan_out = set->base->stores_weights_transposed();  // what its adapters would say
    be = backend.get();
    // On a GPU the deltas are compressed there too (all tasks of a module in one batch); the
    // engine goes before the backend.
    engine = make_device_pt_svd(*be);
    if (engine) attach_device_svd(*set, *engine);
  });
  return merge_source(o, set->source, std::move(manifest), *be, start, &in);
}

}  // namespace revmerge
