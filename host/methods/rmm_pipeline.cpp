// The streamed RMM merge: the stages a module goes through (read into a staging slot, upload,
// compute, write) and the threads and queues that overlap them. docs/pipeline.md describes it.
#include "methods/rmm_pipeline.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "backend/caching_pool.hpp"
#include "core/interrupt.hpp"
#include "methods/rmm_module.hpp"
#include "scheduler/bounded_queue.hpp"
#include "scheduler/stage_threads.hpp"

namespace revmerge {

namespace {

using i64 = std::int64_t;

BundleModule describe(const PlannedModule& pm, const RmmModuleResult& res, i64 n, i64 p) {
  BundleModule bm;
  bm.path = pm.path;
  bm.layer = pm.layer;
  bm.name = pm.name;
  bm.in = pm.in;
  bm.out = pm.out;
  bm.rank = pm.rank;
  bm.task_ranks = pm.task_ranks;
  double raw = 0;
  for (const auto rank : pm.task_ranks) raw += static_cast<double>(rank) * static_cast<double>(pm.in + pm.out);
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

std::uint64_t largest_stack_floats(const RmmSource& source, i64 n) {
  std::uint64_t most = 0;
  for (const auto& pm : source.plan)
    most = std::max(most, static_cast<std::uint64_t>(n * pm.rank * (pm.in + pm.out)));
  return most;
}

// One module on its way through the pipeline.
struct ModuleJob {
  std::size_t index = 0;
  int slot = -1;             // staging slot holding its stacks (until uploaded, or computed on the CPU)
  DeviceBuffer a, b;         // the stacks in device memory (GPU only)
};

struct ModuleDone {
  std::size_t index = 0;
  RmmModuleResult result;
};

// The stages of an RMM merge, one module per work item: read (convert into a staging slot),
// upload (GPU: copy stream), compute (rmm_module_device on the default stream), write (bundle
// tensors, manifest entry, progress). run_sequential calls them in turn; run_pipelined puts
// each on its own thread with bounded queues between them. Both give the same bytes: each
// module is computed by the same calls on the same inputs, and written in plan order.
class RmmPipeline {
 public:
  RmmPipeline(const RmmMergeOptions& o, const RmmSource& source, Backend& be,
              SafetensorsWriter& writer, BundleManifest& manifest, PipelineStats& stats)
      : o_(o),
        source_(source),
        be_(be),
        writer_(writer),
        manifest_(manifest),
        stats_(stats),
        n_(static_cast<i64>(o.tasks.size())),
        device_loads_(!be.shares_host_memory() && source.load_device) {
    max_stack_ = largest_stack_floats(source, n_);
    progress_.bytes_total = source.bytes_total;
    for (const auto& pm : source.plan) {
      if (layer_ends_.empty() || source.plan[layer_ends_.back()].layer != pm.layer)
        layer_ends_.push_back(0);
      layer_ends_.back() = static_cast<std::size_t>(&pm - source.plan.data());
    }
    progress_.layers = layer_ends_.size();
    stats_.modules = source.plan.size();
    stats_.layers = layer_ends_.size();
  }

  void allocate_staging(int slots) {
    if (device_loads_) return;  // the stacks are made in device memory
    for (int i = 0; i < slots; ++i) staging_.push_back(be_.allocate_staging(4 * max_stack_));
  }

  // Into staging slot `slot`, or with device loads straight into the job's device buffers.
  ModuleJob read(std::size_t index, int slot) {
    throw_if_interrupted("merge");
    BusyTimer t(stats_.read_seconds);
    const auto& pm = source_.plan[index];
    if (device_loads_) {
      ModuleJob job{index, -1, be_.allocate(stack_bytes(pm.rank * pm.in)),
                    be_.allocate(stack_bytes(pm.rank * pm.out))};
      bytes_read_ += source_.load_device(pm, job.a.f32(), job.b.f32());
      return job;
    }
    float* a = staging_[slot].f32();
    float* b = a + n_ * pm.rank * pm.in;
    const auto bytes = source_.load(pm, a, b);
    bytes_read_ += bytes;
    return {index, slot, {}, {}};
  }

  // GPU: stacks to device memory on the copy stream; the staging slot is free afterwards.
  // Returns the slot to give back (-1 on the CPU, where compute reads the slot itself).
  int upload(ModuleJob& job, Stream copy) {
    if (be_.shares_host_memory() || device_loads_) return -1;
    BusyTimer t(stats_.upload_seconds);
    const auto& pm = source_.plan[job.index];
    const std::size_t na = stack_bytes(pm.rank * pm.in), nb = stack_bytes(pm.rank * pm.out);
    job.a = be_.allocate(na);
    job.b = be_.allocate(nb);
    const float* a = staging_[job.slot].f32();
    be_.upload(job.a.data(), a, na, copy);
    be_.upload(job.b.data(), a + n_ * pm.rank * pm.in, nb, copy);
    be_.synchronize(copy);
    return std::exchange(job.slot, -1);
  }

  ModuleDone compute(ModuleJob& job) {
    throw_if_interrupted("merge");
    BusyTimer t(stats_.compute_seconds);
    const auto& pm = source_.plan[job.index];
    const float* a = job.slot >= 0 ? staging_[job.slot].f32() : job.a.f32();
    const float* b = job.slot >= 0 ? a + n_ * pm.rank * pm.in : job.b.f32();
    ModuleDone done{job.index, with_module_context(pm.path, [&] {
                      return rmm_module_device(be_, shape(pm), a, b, o_.dtype, {});
                    })};
    job.a = {};
    job.b = {};
    return done;
  }

  void write(ModuleDone& done) {
    throw_if_interrupted("merge");
    BusyTimer t(stats_.write_seconds);
    const auto& pm = source_.plan[done.index];
    const auto& res = done.result;
    for (const auto& [side, part] : {std::pair{"lora_A", &res.a}, std::pair{"lora_B", &res.b}}) {
      writer_.write_f32(bundle_tensor_name(pm.path, side, "mean"), part->mean);
      writer_.write_f32(bundle_tensor_name(pm.path, side, "basis"), part->basis);
      writer_.write_f32(bundle_tensor_name(pm.path, side, "coef"), part->coef);
    }
    manifest_.modules.push_back(describe(pm, res, n_, o_.basis));
    if (o_.progress) o_.progress(done.index + 1, source_.plan.size(), pm.path);
    if (layer_ends_[progress_.layers_done] == done.index) {
      ++progress_.layers_done;
      progress_.bytes_read = bytes_read_;
      progress_.seconds = seconds_since(start_);
      progress_.finished = progress_.layers_done == progress_.layers;
      if (o_.pipeline_progress) o_.pipeline_progress(progress_);
    }
  }

  void run_sequential() {
    allocate_staging(1);
    for (std::size_t i = 0; i < source_.plan.size(); ++i) {
      auto job = read(i, 0);
      upload(job, {});
      auto done = compute(job);
      write(done);
    }
  }

  // Runs a queue operation, adding the time it blocks to `wait`.
  template <class F>
  static auto waited(double& wait, F&& op) {
    BusyTimer t(wait);
    return op();
  }

  void run_pipelined(int slots, int result_slots) {
    allocate_staging(slots);
    BoundedQueue<int> free_slots(static_cast<std::size_t>(slots));
    BoundedQueue<ModuleJob> staged(static_cast<std::size_t>(slots)), uploaded(1);
    BoundedQueue<ModuleDone> results(static_cast<std::size_t>(result_slots));
    StageThreads threads([&] {
      free_slots.cancel();
      staged.cancel();
      uploaded.cancel();
      results.cancel();
    });
    for (int i = 0; i < slots; ++i) free_slots.push(i);
    const bool gpu = !be_.shares_host_memory();
    const Stream copy = gpu && !device_loads_ ? be_.create_stream() : Stream{};
    double& read_wait = stats_.read_wait_seconds;
    double& upload_wait = stats_.upload_wait_seconds;
    double& compute_wait = stats_.compute_wait_seconds;
    double& write_wait = stats_.write_wait_seconds;
    if (device_loads_) {
      // The reader makes each module's stacks on the device: it hands them to compute directly
      // (three modules' stacks at most: being made, queued, computing, as the plan counts).
      threads.spawn([&] {  // read
        for (std::size_t i = 0; i < source_.plan.size(); ++i) {
          auto job = read(i, -1);
          if (!waited(read_wait, [&] { return uploaded.push(std::move(job)); })) return;
        }
        uploaded.close();
      });
    } else {
      threads.spawn([&] {  // read
        for (std::size_t i = 0; i < source_.plan.size(); ++i) {
          const auto slot = waited(read_wait, [&] { return free_slots.pop(); });
          if (!slot) return;
          auto job = read(i, *slot);
          if (!waited(read_wait, [&] { return staged.push(std::move(job)); })) return;
        }
        staged.close();
      });
    }
    if (gpu && !device_loads_) {
      threads.spawn([&] {  // upload
        while (auto job = waited(upload_wait, [&] { return staged.pop(); })) {
          free_slots.push(upload(*job, copy));
          if (!waited(upload_wait, [&] { return uploaded.push(std::move(*job)); })) return;
        }
        uploaded.close();
      });
    }
    threads.spawn([&] {  // compute
      auto& input = gpu ? uploaded : staged;
      while (auto job = waited(compute_wait, [&] { return input.pop(); })) {
        const int slot = job->slot;
        auto done = compute(*job);
        if (slot >= 0) free_slots.push(slot);
        if (!waited(compute_wait, [&] { return results.push(std::move(done)); })) return;
      }
      results.close();
    });
    threads.spawn([&] {  // write
      while (auto done = waited(write_wait, [&] { return results.pop(); })) write(*done);
    });
    threads.join();
    if (manifest_.modules.size() != source_.plan.size())
      throw std::logic_error("rmm pipeline: " + std::to_string(manifest_.modules.size()) + " of " +
                             std::to_string(source_.plan.size()) + " modules written without an error");
  }

  std::uint64_t bytes_read() const { return bytes_read_; }

 private:
  RmmShape shape(const PlannedModule& pm) const { return {n_, pm.rank, pm.in, pm.out, o_.basis}; }
  // Bytes of one side's stack: n tasks of `per_task` floats.
  std::size_t stack_bytes(i64 per_task) const {
    return sizeof(float) * static_cast<std::size_t>(n_ * per_task);
  }
  static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  const RmmMergeOptions& o_;
  const RmmSource& source_;
  Backend& be_;
  SafetensorsWriter& writer_;
  BundleManifest& manifest_;
  PipelineStats& stats_;
  const i64 n_;
  const bool device_loads_;      // the source makes the stacks in device memory (load_device)
  std::uint64_t max_stack_ = 0;  // floats of the largest module's A and B stacks
  std::vector<DeviceBuffer> staging_;
  std::vector<std::size_t> layer_ends_;  // index of each layer's last module
  std::atomic<std::uint64_t> bytes_read_{0};
  PipelineProgress progress_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace

// The memory of the module that needs the most: staging slots are all sized for the largest
// stacks; work and results are the module's own.
RmmSource adapter_source(const AdapterSet& set, bool allow_nonfinite) {
  RmmSource source;
  source.plan = set.plan;
  for (const auto& pm : set.plan)
    for (std::size_t t = 0; t < pm.per_task.size(); ++t)
      for (const auto* key : {&pm.per_task[t]->key_a, &pm.per_task[t]->key_b}) {
        const auto& info = set.adapters[t]->weights().at(*key);
        source.bytes_total += info.end - info.begin;
      }
  source.load = [&set, allow_nonfinite](const PlannedModule& pm, float* a, float* b) {
    return load_stacks_into(pm, set.adapters, allow_nonfinite, a, b);
  };
  return source;
}

ItemMemory largest_module_memory(const RmmMergeOptions& o, const RmmSource& source, Backend& be) {
  const i64 n = static_cast<i64>(o.tasks.size());
  // Sources that make their stacks in device memory use no staging slot there.
  const bool device_loads = !be.shares_host_memory() && source.load_device;
  const std::uint64_t staging = device_loads ? 0 : 4 * largest_stack_floats(source, n);
  ItemMemory worst;
  std::map<std::tuple<i64, i64, i64>, std::uint64_t> work_by_shape;
  for (const auto& pm : source.plan) {
    const RmmShape s{n, pm.rank, pm.in, pm.out, o.basis};
    ItemMemory m;
    m.staging = staging;
    m.device_inputs =
        be.shares_host_memory()
            ? 0
            : pool_size_class(4 * static_cast<std::size_t>(n * pm.rank * pm.in)) +
                  pool_size_class(4 * static_cast<std::size_t>(n * pm.rank * pm.out));
    auto [shape_work, first] = work_by_shape.try_emplace({pm.rank, pm.in, pm.out}, 0);
    if (first) shape_work->second = rmm_module_work_bytes(s, be);
    m.work = shape_work->second;
    m.results = 4 * static_cast<std::uint64_t>((pm.in + pm.out) * (s.r + s.r * s.p + s.p * s.n));
    m.name = pm.path;
    m.layer = pm.layer;
    if (m.work + m.results + m.device_inputs > worst.work + worst.results + worst.device_inputs)
      worst = m;
  }
  for (const auto& [shape, work] : work_by_shape) worst.work_all_shapes += work;
  worst.read_work = source.load_bytes;
  return worst;
}

void run_rmm_modules(const RmmMergeOptions& o, const RmmSource& source, Backend& be,
                     const MemoryPlan& plan, SafetensorsWriter& writer, BundleManifest& manifest,
                     PipelineStats& stats) {
  RmmPipeline pipeline(o, source, be, writer, manifest, stats);
  // The pool stays within the plan: blocks cached for one module's shapes are freed before a
  // module of other shapes would take the pool past it.
  be.limit_cache(be.shares_host_memory() ? plan.host_bytes : plan.device_bytes);
  if (o.sequential) pipeline.run_sequential();
  else pipeline.run_pipelined(plan.staging_slots, plan.result_slots);
  stats.bytes_read = pipeline.bytes_read();
}

}  // namespace revmerge
