#pragma once
// How many workers of one process share one GPU for the budgeted store (store_merge.cpp).
#include <algorithm>
#include <cstdint>

namespace revmerge {

/// Workers sharing one GPU of `gpu_memory` bytes on `cores` CPU threads: at most four, one per
/// four cores and per 16 GiB of the GPU's memory (each holds a device pool of its own), at least
/// one. A module's host-side store work runs behind the device's waits one module at a time, so
/// several workers overlap them (on an H200, the 7b set's `--method auto`: 34.6 s with one
/// worker, 12.1 s with four).
inline int gpu_store_workers(int cores, std::uint64_t gpu_memory) {
  const auto by_memory = static_cast<int>(std::min<std::uint64_t>(4, gpu_memory / (std::uint64_t{16} << 30)));
  return std::max(1, std::min({4, cores / 4, by_memory}));
}

}  // namespace revmerge
