#include "backend/caching_pool.hpp"

#include <algorithm>

#include "revmerge/error.hpp"

namespace revmerge {
// Size classes: 256-byte multiples up to 1 MiB, then 1 MiB multiples.
std::size_t pool_size_class(std::size_t bytes) {
  const std::size_t unit = bytes <= (std::size_t{1} << 20) ? 256 : (std::size_t{1} << 20);
  return std::max(unit, (bytes + unit - 1) / unit * unit);
}

CachingPool::~CachingPool() {
  try {
    std::lock_guard lock(mutex_);
    reap_locked(/*wait=*/true);
  } catch (...) {  // a device that failed: its work will not run any more
  }
  for (auto& [ptr, size] : sizes_) free_fn_(ctx_, ptr);
}

DeviceBuffer CachingPool::allocate(std::size_t bytes) {
  if (bytes == 0) return {};
  const std::size_t cls = pool_size_class(bytes);
  std::lock_guard lock(mutex_);
  reap_locked(/*wait=*/false);
  void* ptr = nullptr;
  if (auto it = free_.find(cls); it != free_.end()) {
    ptr = it->second;
    free_.erase(it);
    cached_ -= cls;
  } else {
    // Blocks cached for another module's shapes give way before the pool passes its limit.
    if (cached_ > 0 && in_use_ + cached_ + cls > limit_) {
      reap_locked(/*wait=*/true);
      free_cached_locked();
    }
    ptr = alloc_(ctx_, cls);
    if (ptr == nullptr && cached_ > 0) {  // give the cache back and retry once
      reap_locked(/*wait=*/true);
      free_cached_locked();
      ptr = alloc_(ctx_, cls);
    }
    if (ptr == nullptr)
      throw device_error(what_ + ": cannot allocate " + std::to_string(cls) + " bytes (" +
                         std::to_string(in_use_) + " bytes in use by revmerge)");
    sizes_[ptr] = cls;
  }
  in_use_ += cls;
  peak_ = std::max(peak_, in_use_ + cached_);
  return DeviceBuffer(ptr, bytes, &CachingPool::give_back, this);
}

void CachingPool::give_back(void* ctx, void* ptr) {
  auto* pool = static_cast<CachingPool*>(ctx);
  // Recorded before taking the lock: the fence covers all work queued up to the release.
  void* fence = pool->fences_.record ? pool->fences_.record(pool->fences_.ctx) : nullptr;
  std::lock_guard lock(pool->mutex_);
  const auto cls = pool->sizes_.at(ptr);
  pool->in_use_ -= cls;
  pool->cached_ += cls;
  if (fence != nullptr)
    pool->in_flight_.push_back({cls, ptr, fence});
  else
    pool->free_.emplace(cls, ptr);
}

void CachingPool::reap_locked(bool wait) {
  // Oldest first; a fence not yet complete means the later ones are not either.
  while (!in_flight_.empty()) {
    auto& f = in_flight_.front();
    if (wait)
      fences_.wait(fences_.ctx, f.fence);
    else if (!fences_.done(fences_.ctx, f.fence))
      break;
    fences_.drop(fences_.ctx, f.fence);
    free_.emplace(f.cls, f.ptr);
    in_flight_.pop_front();
  }
}

void CachingPool::free_cached_locked() {
  for (auto& [c, p] : free_) {
    free_fn_(ctx_, p);
    sizes_.erase(p);
    cached_ -= c;
  }
  free_.clear();
}

void CachingPool::release_cached() {
  std::lock_guard lock(mutex_);
  reap_locked(/*wait=*/true);
  free_cached_locked();
}

void CachingPool::set_limit(std::size_t bytes) {
  std::lock_guard lock(mutex_);
  limit_ = bytes;
}

MemoryUse CachingPool::use() const {
  std::lock_guard lock(mutex_);
  return {in_use_, cached_, peak_};
}

}  // namespace revmerge
