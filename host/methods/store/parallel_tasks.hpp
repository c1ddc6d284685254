#pragma once
// Per-task work of the budgeted store run side by side: each task's small Grams and
// eigendecompositions are too small for a threaded BLAS to use several cores (its threads only
// spin), so the tasks are spread over the cores instead and BLAS runs on one thread in each.
#include <omp.h>

#include <exception>
#include <vector>

namespace revmerge {

/// Calls fn(i) for i in [0, count) on `threads` OpenMP threads (0: all cores); the first
/// exception any call throws is rethrown once all have finished.
template <class F>
void parallel_tasks(long count, int threads, F&& fn) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(count));
#pragma omp parallel for schedule(dynamic) num_threads(threads > 0 ? threads : omp_get_max_threads())
  for (long i = 0; i < count; ++i) {
    try {
      fn(i);
    } catch (...) {
      errors[static_cast<std::size_t>(i)] = std::current_exception();
    }
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

/// Sets this thread's OpenMP thread count (what its parallel regions and OpenBLAS's OpenMP build
/// use) for the guard's lifetime, then restores it; 0 leaves it as it is. Each store worker
/// holds one: two workers each running BLAS on "all cores" spin against each other (a 2-core
/// store took minutes instead of seconds).
class ThreadsOfThisThread {
 public:
  explicit ThreadsOfThisThread(int threads) : before_(omp_get_max_threads()) {
    if (threads > 0) omp_set_num_threads(threads);
  }
  ~ThreadsOfThisThread() { omp_set_num_threads(before_); }
  ThreadsOfThisThread(const ThreadsOfThisThread&) = delete;
  ThreadsOfThisThread& operator=(const ThreadsOfThisThread&) = delete;

 private:
  int before_;
};

}  // namespace revmerge
