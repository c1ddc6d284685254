#include "scheduler/memory_plan.hpp"

#include <algorithm>

#include "core/memory_info.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

// Beyond four staging slots and four result slots nothing overlaps better: reading is one
// thread, and at most two writers run.
constexpr int kMaxStagingSlots = 4, kMaxResultSlots = 4;

}  // namespace

MemoryPlan plan_memory(const ItemMemory& item, std::uint64_t host_budget,
                       std::uint64_t device_budget, const char* budget_option) {
  const bool shared = device_budget == 0;
  // Results alive: the result ring (one being filled, one being written at least). Device
  // memory alive: the work and inputs of the items in flight, and two more items' inputs (one
  // queued, one being uploaded or made).
  const std::uint64_t fixed = (shared ? item.work : 0) + item.read_work;
  auto host_need = [&](int slots, int results) {
    return fixed + std::uint64_t(slots) * item.staging + std::uint64_t(results) * item.results;
  };
  const std::uint64_t host_min = host_need(1, 2);
  const std::uint64_t device_min =
      shared ? 0
             : std::uint64_t(item.in_flight) * (item.work + item.device_inputs) +
                   2 * item.device_inputs + item.device_read_work;
  const auto refuse = [&](const char* where, std::uint64_t need, std::uint64_t budget) {
    return usage_error(std::string(budget_option) + " " + format_bytes(budget) + " of " + where +
                       " memory is too small: module '" + item.name + "'" +
                       (item.layer >= 0 ? " (layer " + std::to_string(item.layer) + ")" : "") +
                       " needs " + format_bytes(need) + " (" + std::to_string(need) +
                       " bytes: staging " + format_bytes(item.staging) +
                       (item.read_work ? ", reading " + format_bytes(item.read_work) : "") +
                       (item.device_read_work && !shared
                            ? ", compressing on the device " + format_bytes(item.device_read_work)
                            : "") +
                       ", work " + format_bytes(item.work) + ", results " +
                       format_bytes(item.results) + ")");
  };
  if (host_min > host_budget) throw refuse(shared ? "host" : "host (staging and results)", host_min, host_budget);
  if (!shared && device_min > device_budget) throw refuse("device", device_min, device_budget);

  MemoryPlan plan;
  plan.host_budget = host_budget;
  plan.device_budget = device_budget;
  plan.staging_slots = 1;
  plan.result_slots = 2;
  while (plan.result_slots < kMaxResultSlots && host_need(1, plan.result_slots + 1) <= host_budget)
    ++plan.result_slots;
  while (plan.staging_slots < kMaxStagingSlots &&
         host_need(plan.staging_slots + 1, plan.result_slots) <= host_budget)
    ++plan.staging_slots;
  plan.host_bytes = host_need(plan.staging_slots, plan.result_slots);
  plan.device_bytes = device_min;
  // With room to spare, the pool keeps every shape's work blocks: allocating and freeing them
  // per module costs page faults on the host and device-wide synchronisation on a GPU.
  const std::uint64_t extra = item.work_all_shapes > item.work ? item.work_all_shapes - item.work : 0;
  std::uint64_t& pool_side = shared ? plan.host_bytes : plan.device_bytes;
  const std::uint64_t pool_budget = shared ? host_budget : device_budget;
  if (extra > 0 && pool_side + extra <= pool_budget) {
    pool_side += extra;
    plan.caches_all_shapes = true;
  }
  return plan;
}

}  // namespace revmerge
