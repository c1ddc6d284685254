#pragma once
// The budgeted store's step timer (StoreMergeOptions::timing): runs a step and reports its wall
// seconds under its name, or only runs it where no one listens.
#include <chrono>
#include <functional>
#include <string>
#include <utility>

namespace revmerge {

using StepTiming = std::function<void(const std::string& step, double seconds)>;

template <class F>
decltype(auto) timed_step(const StepTiming& timing, const char* step, F&& f) {
  if (!timing) return std::forward<F>(f)();
  struct Report {
    const StepTiming& timing;
    const char* step;
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    ~Report() { timing(step, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()); }
  } report{timing, step};
  return std::forward<F>(f)();
}

}  // namespace revmerge
