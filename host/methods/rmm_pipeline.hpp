#pragma once
// The streamed RMM merge (docs/pipeline.md): modules read into a ring of staging buffers,
// uploaded on a copy stream, computed, and written in order, each stage on its own thread.
#include "methods/adapter_set.hpp"
#include "backend/backend.hpp"
#include "revmerge/bundle.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/safetensors.hpp"
#include "scheduler/memory_plan.hpp"

namespace revmerge {

/// The memory of the plan's most demanding module (staging sized for the largest stacks).
ItemMemory largest_module_memory(const RmmMergeOptions& o, const AdapterSet& set, Backend& be);

/// Merges every module of `set` on `be` under `plan` (pipelined, or one at a time with
/// `o.sequential`), writing the bundle tensors into `writer` and the module entries into
/// `manifest` in plan order; fills the stage times and bytes of `stats`. Throws what the stages
/// throw (interrupted on Ctrl-C), after every stage thread has stopped.
void run_rmm_modules(const RmmMergeOptions& o, const AdapterSet& set, Backend& be,
                     const MemoryPlan& plan, SafetensorsWriter& writer, BundleManifest& manifest,
                     PipelineStats& stats);

}  // namespace revmerge
