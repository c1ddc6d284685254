#pragma once
// The CPU backend's threading, shared by its source files: loops over a batch on the backend's
// OpenMP threads, and OpenBLAS kept to one thread inside them.
#include <cblas.h>
#include <omp.h>

#include <cstdint>
#include <exception>
#include <mutex>

namespace revmerge::cpu {

// Runs body(b) for b in [0, count) on `threads` threads; the first exception is rethrown after
// the loop (none escapes the parallel region). Inside a parallel region already (parallel_blocks)
// the loop runs on the calling thread: each block is one thread's work. `dynamic` hands out
// iterations as threads free up (for items of uneven cost); no result depends on which thread
// runs an item.
template <class Body>
void parallel_for(int threads, std::int64_t count, Body body, bool dynamic = false) {
  if (omp_in_parallel()) {
    for (std::int64_t b = 0; b < count; ++b) body(b);
    return;
  }
  std::exception_ptr first;
  std::mutex m;
  auto guarded = [&](std::int64_t b) {
    try {
      body(b);
    } catch (...) {
      std::lock_guard lock(m);
      if (!first) first = std::current_exception();
    }
  };
  if (dynamic) {
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (std::int64_t b = 0; b < count; ++b) guarded(b);
  } else {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (std::int64_t b = 0; b < count; ++b) guarded(b);
  }
  if (first) std::rethrow_exception(first);
}

// OpenBLAS's OpenMP build keeps its thread count in the calling thread's OpenMP settings, so a
// pipeline stage thread starts with "all cores". Each thread that calls BLAS pins it once.
inline void keep_blas_single_threaded() {
  thread_local bool pinned = false;
  if (!pinned) {
    openblas_set_num_threads(1);
    pinned = true;
  }
}

}  // namespace revmerge::cpu
