#pragma once
// The streamed RMM merge (docs/pipeline.md): each module's input bytes staged (as the files
// store them), uploaded on a copy stream, computed on the compute stream, its packed results
// brought down on a third stream and written by several writer threads; each stage on its own
// thread, the streams ordered by events, no host wait inside a module.
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "backend/backend.hpp"
#include "methods/adapter_set.hpp"
#include "revmerge/bundle.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/safetensors.hpp"
#include "scheduler/memory_plan.hpp"

namespace revmerge {

/// Where one task's factors of a module lie in the module's staged input block: byte offsets
/// from the block's start (A: rank × in, B: out × rank), their element type, the task's rank
/// and the scale B is multiplied by (kernels::RmmTaskFactors once the block has an address).
struct StagedFactors {
  std::uint64_t a = 0, b = 0;
  kernels::ElemType type = kernels::ElemType::f32;
  std::int32_t rank = 0;
  float scale = 1.0f;
};

/// One module's staged inputs.
struct StagedModule {
  std::vector<StagedFactors> tasks;  ///< in task order
  std::uint64_t bytes = 0;           ///< of the block that holds them
  std::uint64_t file_bytes = 0;      ///< input file bytes read for them
};

/// The layout of padded f32 stacks in a block — A n × r × in (rows past a rank zero), then
/// B n × out × r (the scale folded in) — as sources that compute their factors write them.
StagedModule f32_stacks_layout(std::int64_t n, std::int64_t r, std::int64_t in, std::int64_t out);

/// What an RMM merge streams: its modules, and how one module's inputs are staged — from PEFT
/// adapters (the tensors' bytes as stored) or from full fine-tunes (each task's Δ against the
/// base compressed by randomized SVD as it is read, into f32 stacks).
struct RmmSource {
  std::vector<PlannedModule> plan;  ///< sorted by (layer, name); `rank` is the padded rank
  std::uint64_t bytes_total = 0;    ///< input file bytes the merge reads (progress)
  /// Bytes of the tasks' own A and B factors as the inputs hold them (full fine-tunes: the
  /// factors of their compression, in the models' dtype): the storage report's reference.
  std::uint64_t factor_bytes = 0;
  /// The dtype of the inputs' factors (the widest, when they differ): the bundle's default.
  DType input_dtype = DType::F32;
  /// Host memory one load holds besides its staging block, at most (a full fine-tune's deltas).
  std::uint64_t load_bytes = 0;
  /// Device memory one load holds for a batch of `tasks` deltas, at most (full fine-tunes
  /// compressed on the GPU); empty where loads use host memory only.
  std::function<std::uint64_t(std::int64_t tasks)> device_load_bytes;
  /// Holds the loads' device memory to the plan's share (set with device_load_bytes).
  std::function<void(std::uint64_t bytes)> limit_device_load;
  /// Bytes of module `pm`'s staged block.
  std::function<std::uint64_t(const PlannedModule& pm)> staged_bytes;
  /// Stages module `pm`'s inputs into `block` (host memory of staged_bytes(pm) bytes). Called
  /// by one thread at a time.
  std::function<StagedModule(const PlannedModule& pm, std::byte* block)> load;
  /// As `load`, into backend memory, complete on return; set where a source makes its inputs
  /// on the device (full fine-tunes compressed on a GPU). On a backend with memory of its own
  /// the pipeline then loads into device buffers: nothing passes through staging or the copy
  /// stream.
  std::function<StagedModule(const PlannedModule& pm, std::byte* block)> load_device;
  /// The message for a non-finite input of module `pm` (its kernels::rmm_input_key): file,
  /// tensor, element and value.
  std::function<std::string(const PlannedModule& pm, unsigned long long key)> nonfinite_message;
};

/// Threads for the pipeline's helpers (reading, writing) where the caller gave none (`asked` 0):
/// `plenty` on a machine of 8 cores or more, else 1. Writing is page-cache copies and reading
/// memcpy from mapped files: more threads help where cores are plenty, and take cores from
/// compute where they are not.
inline int helper_threads(int asked, int plenty) {
  if (asked > 0) return asked;
  return std::thread::hardware_concurrency() >= 8 ? plenty : 1;
}

/// The adapters of `set` as a source (`set` must outlive it): each module's A and B tensors
/// copied as stored, by `reader_threads` threads (0: by the core count), B's scale and the
/// padding to the largest rank left to the routine.
RmmSource adapter_source(const AdapterSet& set, int reader_threads = 0);

/// The memory of the plan's most demanding module (staging sized for the largest block).
ItemMemory largest_module_memory(const RmmMergeOptions& o, DType storage, const RmmSource& source,
                                 const Backend& be);

/// Merges every module of `source` on `be` under `plan` (pipelined, or one at a time with
/// `o.sequential`), storing `storage`, writing the bundle tensors into `writer` and the module
/// entries into `manifest` in plan order; fills the stage times and bytes of `stats`. Throws
/// what the stages throw (interrupted on Ctrl-C; format_error for a non-finite input unless
/// allowed), after every stage thread has stopped.
void run_rmm_modules(const RmmMergeOptions& o, DType storage, const RmmSource& source,
                     Backend& be, const MemoryPlan& plan, SafetensorsWriter& writer,
                     BundleManifest& manifest, PipelineStats& stats);

}  // namespace revmerge
