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
  for (auto& [ptr, size] : sizes_) free_fn_(ctx_, ptr);
}

DeviceBuffer CachingPool::allocate(std::size_t bytes) {
  if (bytes == 0) return {};
  const std::size_t cls = pool_size_class(bytes);
  std::lock_guard lock(mutex_);
  void* ptr = nullptr;
  if (auto it = free_.find(cls); it != free_.end()) {
    ptr = it->second;
    free_.erase(it);
    cached_ -= cls;
  } else {
    // Blocks cached for another module's shapes give way before the pool passes its limit.
    if (cached_ > 0 && in_use_ + cached_ + cls > limit_) free_cached_locked();
    ptr = alloc_(ctx_, cls);
    if (ptr == nullptr && !free_.empty()) {  // give the cache back and retry once
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
  std::lock_guard lock(pool->mutex_);
  const auto cls = pool->sizes_.at(ptr);
  pool->in_use_ -= cls;
  pool->cached_ += cls;
  pool->free_.emplace(cls, ptr);
}

void CachingPool::free_cached_locked() {
  for (auto& [c, p] : free_) {
    free_fn_(ctx_, p);
    sizes_.erase(p);
  }
  free_.clear();
  cached_ = 0;
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
