// The streamed RMM merge: the stages a module goes through (stage its input bytes, upload,
// compute, bring the results down, write) and the threads, queues and events that overlap
// them. docs/pipeline.md describes it.
#include "methods/rmm_pipeline.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
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

// Modules whose work the compute stage may have queued on the device at once: one computing
// while the next is queued behind it; the next waits for the oldest to finish.
constexpr int kModulesInFlight = 2;

BundleModule describe(const PlannedModule& pm, const RmmModuleReport& rep, i64 n, i64 p) {
  auto bm = module_entry(pm);
  bm.basis = {p, p};
  double raw = 0;
  for (const auto rank : pm.task_ranks) raw += static_cast<double>(rank) * static_cast<double>(pm.in + pm.out);
  const double stored = static_cast<double>(pm.in + pm.out) * double(p * (pm.rank + n) + pm.rank);
  bm.storage_ratio = stored / raw;
  bm.factor_error_a = rep.factor_error[0];
  bm.factor_error_b = rep.factor_error[1];
  bm.delta_error = rep.delta_error;
  bm.delta_norm = rep.delta_norm;
  bm.spectrum_a = rep.spectrum[0];
  bm.spectrum_b = rep.spectrum[1];
  return bm;
}

RmmShape shape_of(const PlannedModule& pm, i64 n, i64 p) { return {n, pm.rank, pm.in, pm.out, p}; }

std::vector<kernels::RmmTaskFactors> place(const StagedModule& staged, const void* block) {
  const auto* base = static_cast<const std::byte*>(block);
  std::vector<kernels::RmmTaskFactors> tasks;
  for (const auto& f : staged.tasks)
    tasks.push_back({base + f.a, base + f.b, f.type, f.rank, f.scale});
  return tasks;
}

// One module on its way through the pipeline.
struct ModuleJob {
  std::size_t index = 0;
  int slot = -1;       // staging slot holding its block (until uploaded; on the CPU, computed)
  StagedModule staged;
  DeviceBuffer input;  // the block in device memory (backends with memory of their own)
  Event uploaded;      // the upload's completion, for the compute stream to wait on
};

struct ModuleDone {
  std::size_t index = 0;
  int result = -1;  // the result slot its packed results come down into
  Event downloaded;
};

// Device memory of a module whose work is queued, kept until its results are down.
struct InFlight {
  Event done;
  std::vector<DeviceBuffer> buffers;
};

// The stages of an RMM merge, one module per work item: read (stage the input bytes), upload
// (copy-in stream), compute (queue the module's work on the compute stream and its results'
// download on the copy-out stream), write (wait for the results, write the bundle tensors,
// the manifest entry, progress). run_sequential calls them in turn; run_pipelined puts each on
// its own thread(s) with bounded queues between them. Both give the same bytes: each module is
// computed by the same calls on the same inputs and written at offsets fixed in advance.
//
//   reader    | stage m0 | stage m1 | stage m2 | ...             (host threads: memcpy)
//   copy-in   |          | up m0    | up m1    | up m2 |          (uploads, events E_up)
//   compute   |          |    wait E_up → m0 ......| m1 ......|   (routine, GEMMs, terms)
//   copy-out  |          |              wait → down m0 | down m1  (packed results → pinned)
//   writers   |          |                      sync → write m0 | write m1
class RmmPipeline {
 public:
  RmmPipeline(const RmmMergeOptions& o, DType storage, const RmmSource& source, Backend& be,
              SafetensorsWriter& writer, BundleManifest& manifest, PipelineStats& stats)
      : o_(o),
        storage_(storage),
        source_(source),
        be_(be),
        writer_(writer),
        manifest_(manifest),
        stats_(stats),
        n_(static_cast<i64>(o.tasks.size())),
        shared_(be.shares_host_memory()),
        device_loads_(!be.shares_host_memory() && source.load_device) {
    progress_.bytes_total = source.bytes_total;
    std::map<int, std::size_t> per_layer;
    for (const auto& pm : source.plan) {
      max_staged_ = std::max(max_staged_, source.staged_bytes(pm));
      max_packed_ = std::max(max_packed_, RmmPacked::layout(shape(pm), storage).bytes);
      if (layer_of_.empty() || source.plan[layer_of_.size() - 1].layer != pm.layer)
        layer_left_.push_back(0);
      layer_of_.push_back(layer_left_.size() - 1);
      ++layer_left_.back();
    }
    progress_.layers = layer_left_.size();
    stats_.modules = source.plan.size();
    stats_.layers = layer_left_.size();
    manifest_.modules.assign(source.plan.size(), BundleModule{});
  }

  ~RmmPipeline() {
    // Work still queued (a failure midway) must finish before its memory goes back.
    try {
      for (auto& f : in_flight_) be_.synchronize_event(f.done);
    } catch (...) {
    }
  }

  void allocate(int slots, int result_slots) {
    if (!device_loads_)
      for (int i = 0; i < slots; ++i) staging_.push_back(be_.allocate_staging(max_staged_));
    for (int i = 0; i < result_slots; ++i) results_.push_back(be_.allocate_staging(max_packed_));
    if (!shared_) {
      copy_in_ = device_loads_ ? Stream{} : be_.create_stream();
      copy_out_ = be_.create_stream();
    }
  }

  // Into staging slot `slot`, or with device loads straight into the job's device buffer.
  ModuleJob read(std::size_t index, int slot) {
    throw_if_interrupted("merge");
    BusyTimer t(stats_.read_seconds);
    const auto& pm = source_.plan[index];
    ModuleJob job{index, slot, {}, {}, {}};
    if (device_loads_) {
      job.input = be_.allocate(source_.staged_bytes(pm));
      job.staged = source_.load_device(pm, static_cast<std::byte*>(job.input.data()));
    } else {
      job.staged = source_.load(pm, static_cast<std::byte*>(staging_[slot].data()));
    }
    bytes_read_ += job.staged.file_bytes;
    return job;
  }

  // Backends with memory of their own: the block to device memory on the copy-in stream, an
  // event for the compute stream to wait on. The slot is free once the copy has run.
  void upload(ModuleJob& job) {
    if (shared_ || device_loads_) return;
    BusyTimer t(stats_.upload_seconds);
    job.input = be_.allocate(job.staged.bytes);
    be_.upload(job.input.data(), staging_[job.slot].data(), job.staged.bytes, copy_in_);
    job.uploaded = be_.record_event(copy_in_);
  }
  // Returns the job's staging slot once its upload has run (-1 where compute reads the slot).
  int upload_done(int slot) {
    if (shared_ || device_loads_ || slot < 0) return -1;
    be_.synchronize(copy_in_);
    return slot;
  }

  // Queues the module's work and the download of its results; waits on the host only when
  // kModulesInFlight modules are already queued (for the oldest of them).
  ModuleDone compute(ModuleJob& job, int result_slot) {
    throw_if_interrupted("merge");
    BusyTimer t(stats_.compute_seconds);
    while (!in_flight_.empty() && be_.query_event(in_flight_.front().done)) in_flight_.pop_front();
    while (static_cast<int>(in_flight_.size()) >= kModulesInFlight) {
      be_.synchronize_event(in_flight_.front().done);
      in_flight_.pop_front();
    }
    const auto& pm = source_.plan[job.index];
    const void* block = job.input.data() ? job.input.data() : staging_[job.slot].data();
    const auto layout = RmmPacked::layout(shape(pm), storage_);
    InFlight held;
    held.buffers.push_back(be_.allocate(layout.bytes));
    void* packed = held.buffers.back().data();
    if (job.uploaded.handle()) be_.wait_event(compute_, job.uploaded);
    auto work = with_module_context(pm.path, [&] {
      return rmm_module_enqueue(be_, shape(pm), place(job.staged, block), storage_, packed,
                                compute_);
    });
    const Event computed = be_.record_event(compute_);
    be_.wait_event(copy_out_, computed);
    be_.download(results_[result_slot].data(), packed, layout.bytes, copy_out_);
    ModuleDone done{job.index, result_slot, be_.record_event(copy_out_)};
    held.done = be_.record_event(copy_out_);
    held.buffers.push_back(std::move(job.input));
    for (auto& b : work.buffers) held.buffers.push_back(std::move(b));
    in_flight_.push_back(std::move(held));
    return done;
  }

  // Waits for the module's results, checks them and writes them. Several writers may run at
  // once: each module's tensors have their own byte ranges, the manifest entry its own place.
  void write(ModuleDone& done, double& busy, double& wait) {
    throw_if_interrupted("merge");
    {
      BusyTimer w(wait);
      be_.synchronize_event(done.downloaded);
    }
    BusyTimer t(busy);
    const auto& pm = source_.plan[done.index];
    const auto* host = static_cast<const std::byte*>(results_[done.result].data());
    const auto s = shape(pm);
    const auto layout = RmmPacked::layout(s, storage_);
    const auto rep = rmm_module_report(s, storage_, host);
    if (rep.first_unconverged != kernels::kRmmNoKey)
      throw solver_error("module '" + pm.path + "': the Jacobi eigensolver did not converge at " +
                         "position " + std::to_string(rep.first_unconverged & ((1ull << 48) - 1)) +
                         " of side " + (rep.first_unconverged >> 48 ? "B" : "A"));
    if (rep.first_nonfinite != kernels::kRmmNoKey && !o_.allow_nonfinite)
      throw format_error(source_.nonfinite_message(pm, rep.first_nonfinite));
    for (int side = 0; side < 2; ++side)
      for (int part = 0; part < 3; ++part) {
        const std::size_t at = part == 0 ? layout.mean[side] : part == 1 ? layout.basis[side] : layout.coef[side];
        writer_.write(bundle_tensor_name(pm.path, side == 0 ? "lora_A" : "lora_B",
                                         part == 0 ? "mean" : part == 1 ? "basis" : "coef"),
                      {host + at, layout.tensor_bytes(s, storage_, side, part)});
      }
    manifest_.modules[done.index] = describe(pm, rep, n_, o_.basis);
    report_progress(done.index);
  }

  void run_sequential() {
    allocate(1, 1);
    double write_busy = 0, write_wait = 0;
    for (std::size_t i = 0; i < source_.plan.size(); ++i) {
      auto job = read(i, 0);
      upload(job);
      auto done = compute(job, 0);
      upload_done(job.slot);
      write(done, write_busy, write_wait);
    }
    stats_.write_seconds += write_busy;
    stats_.write_wait_seconds += write_wait;
  }

  // Runs a queue operation, adding the time it blocks to `wait`.
  template <class F>
  static auto waited(double& wait, F&& op) {
    BusyTimer t(wait);
    return op();
  }

  void run_pipelined(int slots, int result_slots) {
    const int writers = std::min(helper_threads(o_.writer_threads, 2), result_slots);
    allocate(slots, result_slots);
    BoundedQueue<int> free_slots(static_cast<std::size_t>(slots)),
        free_results(static_cast<std::size_t>(result_slots));
    BoundedQueue<ModuleJob> staged(static_cast<std::size_t>(slots)), uploaded(1);
    BoundedQueue<ModuleDone> results(static_cast<std::size_t>(result_slots));
    StageThreads threads([&] {
      free_slots.cancel();
      free_results.cancel();
      staged.cancel();
      uploaded.cancel();
      results.cancel();
    });
    for (int i = 0; i < slots; ++i) free_slots.push(i);
    for (int i = 0; i < result_slots; ++i) free_results.push(i);
    const bool uploads = !shared_ && !device_loads_;
    double& read_wait = stats_.read_wait_seconds;
    double& upload_wait = stats_.upload_wait_seconds;
    double& compute_wait = stats_.compute_wait_seconds;
    threads.spawn([&] {  // read
      auto& out = uploads || shared_ ? staged : uploaded;
      for (std::size_t i = 0; i < source_.plan.size(); ++i) {
        int slot = -1;
        if (!device_loads_) {
          const auto free = waited(read_wait, [&] { return free_slots.pop(); });
          if (!free) return;
          slot = *free;
        }
        auto job = read(i, slot);
        if (!waited(read_wait, [&] { return out.push(std::move(job)); })) return;
      }
      out.close();
    });
    if (uploads) {
      threads.spawn([&] {  // upload
        while (auto job = waited(upload_wait, [&] { return staged.pop(); })) {
          const int slot = job->slot;
          upload(*job);
          if (!waited(upload_wait, [&] { return uploaded.push(std::move(*job)); })) return;
          free_slots.push(upload_done(slot));
        }
        uploaded.close();
      });
    }
    threads.spawn([&] {  // compute
      auto& input = shared_ ? staged : uploaded;
      while (auto job = waited(compute_wait, [&] { return input.pop(); })) {
        const auto result = waited(compute_wait, [&] { return free_results.pop(); });
        if (!result) return;
        const int slot = job->slot;
        auto done = compute(*job, *result);
        if (shared_) free_slots.push(slot);  // the CPU's work has run: the slot is read
        if (!waited(compute_wait, [&] { return results.push(std::move(done)); })) return;
      }
      results.close();
    });
    std::vector<double> busy(static_cast<std::size_t>(writers)), wait(busy.size());
    for (int w = 0; w < writers; ++w)
      threads.spawn([&, w] {  // write
        while (auto done = waited(wait[w], [&] { return results.pop(); })) {
          const int slot = done->result;
          write(*done, busy[w], wait[w]);
          free_results.push(slot);
        }
      });
    threads.join();
    for (int w = 0; w < writers; ++w) {
      stats_.write_seconds += busy[w];
      stats_.write_wait_seconds += wait[w];
    }
    if (modules_written_ != source_.plan.size())
      throw std::logic_error("rmm pipeline: " + std::to_string(modules_written_) + " of " +
                             std::to_string(source_.plan.size()) + " modules written without an error");
  }

  std::uint64_t bytes_read() const { return bytes_read_; }

 private:
  RmmShape shape(const PlannedModule& pm) const { return shape_of(pm, n_, o_.basis); }
  static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // Modules may be written out of plan order by several writers: a layer is done when its
  // last module is, and progress reports run one at a time.
  void report_progress(std::size_t index) {
    std::lock_guard lock(progress_mutex_);
    ++modules_written_;
    if (o_.progress) o_.progress(modules_written_, source_.plan.size(), source_.plan[index].path);
    if (--layer_left_[layer_of_[index]] > 0) return;
    ++progress_.layers_done;
    progress_.bytes_read = bytes_read_;
    progress_.seconds = seconds_since(start_);
    progress_.finished = progress_.layers_done == progress_.layers;
    if (o_.pipeline_progress) o_.pipeline_progress(progress_);
  }

  const RmmMergeOptions& o_;
  const DType storage_;
  const RmmSource& source_;
  Backend& be_;
  SafetensorsWriter& writer_;
  BundleManifest& manifest_;
  PipelineStats& stats_;
  const i64 n_;
  const bool shared_;        // backend memory is host memory: no uploads, no downloads to wait
  const bool device_loads_;  // the source makes the inputs in device memory (load_device)
  std::uint64_t max_staged_ = 0, max_packed_ = 0;
  std::vector<DeviceBuffer> staging_, results_;
  Stream compute_{}, copy_in_{}, copy_out_{};
  std::deque<InFlight> in_flight_;  // compute stage only
  std::vector<std::size_t> layer_of_, layer_left_;
  std::atomic<std::uint64_t> bytes_read_{0};
  std::mutex progress_mutex_;
  std::size_t modules_written_ = 0;
  PipelineProgress progress_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace

ItemMemory largest_module_memory(const RmmMergeOptions& o, DType storage, const RmmSource& source,
                                 const Backend& be) {
  const i64 n = static_cast<i64>(o.tasks.size());
  // Sources that make their inputs in device memory use no staging slot there.
  const bool device_loads = !be.shares_host_memory() && source.load_device;
  std::uint64_t staged = 0, packed = 0;
  for (const auto& pm : source.plan) {
    staged = std::max(staged, source.staged_bytes(pm));
    packed = std::max<std::uint64_t>(packed, RmmPacked::layout(shape_of(pm, n, o.basis), storage).bytes);
  }
  ItemMemory worst;
  std::map<std::tuple<i64, i64, i64>, std::uint64_t> work_by_shape;
  for (const auto& pm : source.plan) {
    const auto s = shape_of(pm, n, o.basis);
    ItemMemory m;
    m.staging = device_loads ? 0 : staged;
    m.device_inputs = be.shares_host_memory() ? 0 : pool_size_class(source.staged_bytes(pm));
    auto [shape_work, first] = work_by_shape.try_emplace({pm.rank, pm.in, pm.out}, 0);
    if (first)
      shape_work->second = rmm_module_work_bytes(s, be) +
                           pool_size_class(RmmPacked::layout(s, storage).bytes);
    m.work = shape_work->second;
    m.results = packed;  // every result slot holds the largest module's
    m.name = pm.path;
    m.layer = pm.layer;
    if (m.work + m.device_inputs > worst.work + worst.device_inputs) worst = m;
  }
  for (const auto& [shape, work] : work_by_shape) worst.work_all_shapes += work;
  worst.read_work = source.load_bytes;
  worst.in_flight = kModulesInFlight;
  return worst;
}

void run_rmm_modules(const RmmMergeOptions& o, DType storage, const RmmSource& source,
                     Backend& be, const MemoryPlan& plan, SafetensorsWriter& writer,
                     BundleManifest& manifest, PipelineStats& stats) {
  RmmPipeline pipeline(o, storage, source, be, writer, manifest, stats);
  // The pool stays within the plan: blocks cached for one module's shapes are freed before a
  // module of other shapes would take the pool past it.
  be.limit_cache(be.shares_host_memory() ? plan.host_bytes : plan.device_bytes);
  if (o.sequential) pipeline.run_sequential();
  else pipeline.run_pipelined(plan.staging_slots, plan.result_slots);
  stats.bytes_read = pipeline.bytes_read();
}

}  // namespace revmerge
