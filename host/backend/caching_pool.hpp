#pragma once
// A caching allocator shared by the backends: freed blocks are kept by size class and handed out
// again, so the same shapes requested layer after layer cost no allocation (no cudaMalloc on the
// GPU, no fresh zero-filled pages on the CPU). Thread-safe; it tracks what is in use, cached and
// the peak, which `revmerge bench` reports.
#include <cstddef>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "backend/backend.hpp"

namespace revmerge {

/// The block size the pool hands out for a request of `bytes`.
std::size_t pool_size_class(std::size_t bytes);

class CachingPool {
 public:
  /// Raw allocation: returns nullptr when out of memory; `release` frees what it returned.
  using RawAlloc = void* (*)(void* ctx, std::size_t bytes);
  using RawFree = void (*)(void* ctx, void* ptr);

  CachingPool(std::string what, RawAlloc alloc, RawFree release, void* ctx)
      : what_(std::move(what)), alloc_(alloc), free_fn_(release), ctx_(ctx) {}
  ~CachingPool();
  CachingPool(const CachingPool&) = delete;
  CachingPool& operator=(const CachingPool&) = delete;

  /// A block of at least `bytes`; on exhaustion the cache is given back and the request retried
  /// once, then device_error names the size and what is in use.
  DeviceBuffer allocate(std::size_t bytes);
  /// Holds blocks in use plus cached to `bytes` where caching is what would pass it: a new
  /// block that would is preceded by freeing the cache. (Blocks in use are never touched.)
  void set_limit(std::size_t bytes);
  MemoryUse use() const;

 private:
  static void give_back(void* ctx, void* ptr);
  void free_cached_locked();  // frees every cached block; mutex_ held
  std::string what_;
  RawAlloc alloc_;
  RawFree free_fn_;
  void* ctx_;
  mutable std::mutex mutex_;
  std::unordered_map<void*, std::size_t> sizes_;  // every block held, by address
  std::multimap<std::size_t, void*> free_;        // cached blocks by size class
  std::size_t in_use_ = 0, cached_ = 0, peak_ = 0;
  std::size_t limit_ = ~std::size_t{0};
};

}  // namespace revmerge
