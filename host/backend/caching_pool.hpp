#pragma once
// A caching allocator shared by the backends: freed blocks are kept by size class and handed out
// again, so the same shapes requested layer after layer cost no allocation (no cudaMalloc on the
// GPU, no fresh zero-filled pages on the CPU). Thread-safe; it tracks what is in use, cached and
// the peak, which `revmerge bench` reports.
//
// Stream-ordered when given fences (the CUDA backend's pools): a block given back while work
// queued on a stream may still touch it waits behind a fence recorded at that moment, and is
// handed out again only once the fence has completed — so a buffer may be dropped as soon as
// its last use is queued, as with cudaFreeAsync. The host waits on a fence only when the pool
// would otherwise pass its limit or the device is out of memory.
#include <cstddef>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "backend/backend.hpp"

namespace revmerge {

/// The block size the pool hands out for a request of `bytes`.
std::size_t pool_size_class(std::size_t bytes);

/// How a pool learns when queued work is done with a block. `record` marks everything queued so
/// far (nullptr when nothing can be pending); `done` never waits; `wait` blocks the host until
/// the fence completes; `drop` releases it. A fence recorded later completes later (it covers
/// the earlier one's work and more).
struct PoolFences {
  void* (*record)(void* ctx) = nullptr;
  bool (*done)(void* ctx, void* fence) = nullptr;
  void (*wait)(void* ctx, void* fence) = nullptr;
  void (*drop)(void* ctx, void* fence) = nullptr;
  void* ctx = nullptr;
};

class CachingPool {
 public:
  /// Raw allocation: returns nullptr when out of memory; `release` frees what it returned.
  using RawAlloc = void* (*)(void* ctx, std::size_t bytes);
  using RawFree = void (*)(void* ctx, void* ptr);

  CachingPool(std::string what, RawAlloc alloc, RawFree release, void* ctx, PoolFences fences = {})
      : what_(std::move(what)), alloc_(alloc), free_fn_(release), ctx_(ctx), fences_(fences) {}
  ~CachingPool();
  CachingPool(const CachingPool&) = delete;
  CachingPool& operator=(const CachingPool&) = delete;

  /// A block of at least `bytes`; on exhaustion the cache is given back (after waiting for the
  /// fences of blocks still in flight) and the request retried once, then device_error names
  /// the size and what is in use.
  DeviceBuffer allocate(std::size_t bytes);
  /// Holds blocks in use plus cached to `bytes` where caching is what would pass it: a new
  /// block that would is preceded by freeing the cache. (Blocks in use are never touched.)
  void set_limit(std::size_t bytes);
  MemoryUse use() const;
  /// Waits for every fence, then frees every cached block (a backend's teardown, before the
  /// streams the fences and raw frees use go away).
  void release_cached();

 private:
  struct InFlight {
    std::size_t cls;
    void* ptr;
    void* fence;
  };
  static void give_back(void* ctx, void* ptr);
  void reap_locked(bool wait);  // moves blocks whose fences completed (or all, waiting) to free_
  void free_cached_locked();    // frees every reusable cached block; mutex_ held
  std::string what_;
  RawAlloc alloc_;
  RawFree free_fn_;
  void* ctx_;
  PoolFences fences_;
  mutable std::mutex mutex_;
  std::unordered_map<void*, std::size_t> sizes_;  // every block held, by address
  std::multimap<std::size_t, void*> free_;        // reusable cached blocks by size class
  std::deque<InFlight> in_flight_;                // given back, behind a fence, oldest first
  std::size_t in_use_ = 0, cached_ = 0, peak_ = 0;  // cached_ counts in_flight_ too
  std::size_t limit_ = ~std::size_t{0};
};

}  // namespace revmerge
