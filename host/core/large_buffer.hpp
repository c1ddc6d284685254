#pragma once
// Scratch arrays of hundreds of MB (a model weight in f64, its f32 copy) on 2 MiB-aligned memory
// advised for transparent huge pages: one page fault per 2 MiB instead of per 4 KiB, and a GEMM
// streaming through the array misses the TLB far less often. Contents are uninitialised (every
// user writes before it reads); growing keeps nothing.
#include <sys/mman.h>

#include <cstdlib>
#include <new>
#include <span>

namespace revmerge {

template <class T>
class LargeBuffer {
 public:
  LargeBuffer() = default;
  ~LargeBuffer() { std::free(data_); }
  LargeBuffer(const LargeBuffer&) = delete;
  LargeBuffer& operator=(const LargeBuffer&) = delete;

  /// Room for at least `count` elements (reallocated, contents dropped, when it had less).
  void reserve(std::size_t count) {
    if (count <= capacity_) return;
    constexpr std::size_t kHuge = std::size_t{2} << 20;
    const std::size_t bytes = (count * sizeof(T) + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(kHuge, bytes);
    if (!p) throw std::bad_alloc();
    ::madvise(p, bytes, MADV_HUGEPAGE);  // a hint: without THP it is ordinary memory
    std::free(data_);
    data_ = static_cast<T*>(p);
    capacity_ = bytes / sizeof(T);
  }
  /// The first `count` elements (reserved first).
  std::span<T> first(std::size_t count) {
    reserve(count);
    return {data_, count};
  }

 private:
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace revmerge
