#pragma once
// How much memory a streamed merge holds, decided before it starts: the staging ring's slots,
// the backend's work memory for one module, results waiting for the writer. The budget bounds
// the total; one module that cannot fit is refused by name, before anything is read.
#include <cstdint>
#include <string>

namespace revmerge {

/// The memory one work item needs (its largest instance in the plan).
struct ItemMemory {
  std::uint64_t staging = 0;  ///< converted inputs in host staging memory
  /// Host memory the reader holds while it fills a slot, besides the slot (one reader: counted
  /// once): full fine-tunes' deltas while they are compressed; 0 for adapters.
  std::uint64_t read_work = 0;
  /// Device memory the reader holds while it fills a slot (full fine-tunes compressed on the
  /// GPU: their deltas and the sketch's matrices); 0 when it reads on the host only.
  std::uint64_t device_read_work = 0;
  std::uint64_t work = 0;     ///< backend memory while it computes (inputs on the device included)
  std::uint64_t device_inputs = 0;  ///< inputs uploaded ahead of compute (0 when host memory is shared)
  std::uint64_t results = 0;  ///< host memory of one result slot (results come down into it)
  /// Items whose work (and inputs) a device holds at once: queued work is released only once
  /// it has run. 1 where work runs when it is called (the CPU).
  int in_flight = 1;
  /// Work memory of every distinct item shape together: with that much the backend's pool
  /// keeps each shape's blocks cached and allocates nothing after the first layer.
  std::uint64_t work_all_shapes = 0;
  std::string name;           ///< the item, for messages ("model.layers.3.mlp.up_proj")
  int layer = -1;
};

struct MemoryPlan {
  int staging_slots = 1;  ///< ring size
  int result_slots = 2;   ///< result ring size: one being filled, one being written, more queued
  std::uint64_t host_budget = 0, device_budget = 0;
  std::uint64_t host_bytes = 0, device_bytes = 0;  ///< what the plan holds at most
  bool caches_all_shapes = false;  ///< the budget holds work_all_shapes: nothing is re-allocated
};

/// Plans a pipeline for `item` under the budgets (device_budget 0: backend memory is host
/// memory and counts against host_budget). Throws usage_error naming the item, its layer and
/// the bytes it needs when even one slot of everything does not fit.
MemoryPlan plan_memory(const ItemMemory& item, std::uint64_t host_budget,
                       std::uint64_t device_budget, const char* budget_option);

}  // namespace revmerge
