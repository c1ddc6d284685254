#pragma once
// The streamed RMM merge (docs/pipeline.md): modules read into a ring of staging buffers,
// uploaded on a copy stream, computed, and written in order, each stage on its own thread.
#include <functional>

#include "methods/adapter_set.hpp"
#include "backend/backend.hpp"
#include "revmerge/bundle.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/safetensors.hpp"
#include "scheduler/memory_plan.hpp"

namespace revmerge {

/// What an RMM merge streams: its modules, and how one module's stacks are loaded — from PEFT
/// adapters (factors read and converted) or from full fine-tunes (each task's Δ against the
/// base compressed by randomized SVD as it is read).
struct RmmSource {
  std::vector<PlannedModule> plan;  ///< sorted by (layer, name); `rank` is the padded rank
  std::uint64_t bytes_total = 0;    ///< input file bytes the merge reads (progress)
  /// Host memory one load holds besides its staging slot, at most (a full fine-tune's deltas).
  std::uint64_t load_bytes = 0;
  /// Device memory one load holds for a batch of `tasks` deltas, at most (full fine-tunes
  /// compressed on the GPU); empty where loads use host memory only.
  std::function<std::uint64_t(std::int64_t tasks)> device_load_bytes;
  /// Holds the loads' device memory to the plan's share (set with device_load_bytes).
  std::function<void(std::uint64_t bytes)> limit_device_load;
  /// Writes module `pm`'s stacks, A n × r × in (rows past a task's rank zero) and B n × out × r
  /// (scale folded in, columns past the rank zero), into caller-owned memory; returns the file
  /// bytes read. Called by one thread at a time.
  std::function<std::uint64_t(const PlannedModule& pm, float* a, float* b)> load;
  /// As `load`, into backend memory (`a`, `b`: n · r · in and n · out · r floats there), the
  /// stacks complete on return; set where a source makes its stacks on the device (full
  /// fine-tunes compressed on a GPU). On a backend with memory of its own the pipeline then
  /// loads into device buffers, and nothing passes through staging or the copy stream.
  std::function<std::uint64_t(const PlannedModule& pm, float* a, float* b)> load_device;
};

/// The adapters of `set` as a source (`set` must outlive it).
RmmSource adapter_source(const AdapterSet& set, bool allow_nonfinite);

/// The memory of the plan's most demanding module (staging sized for the largest stacks).
ItemMemory largest_module_memory(const RmmMergeOptions& o, const RmmSource& source, Backend& be);

/// Merges every module of `source` on `be` under `plan` (pipelined, or one at a time with
/// `o.sequential`), writing the bundle tensors into `writer` and the module entries into
/// `manifest` in plan order; fills the stage times and bytes of `stats`. Throws what the stages
/// throw (interrupted on Ctrl-C), after every stage thread has stopped.
void run_rmm_modules(const RmmMergeOptions& o, const RmmSource& source, Backend& be,
                     const MemoryPlan& plan, SafetensorsWriter& writer, BundleManifest& manifest,
                     PipelineStats& stats);

}  // namespace revmerge
