#pragma once
// The threads of a pipeline: each stage runs on its own thread; the first exception cancels
// every queue (so no stage waits forever), and join() rethrows it on the calling thread. Each
// stage's busy time (inside its work, not waiting on a queue) is kept for the report.
#include <chrono>
#include <exception>
#include <functional>
#include <stdexcept>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace revmerge {

class StageThreads {
 public:
  /// `cancel` is called once, on the first failure: it cancels the pipeline's queues.
  explicit StageThreads(std::function<void()> cancel) : cancel_(std::move(cancel)) {}
  /// Leaving without join() (an exception on the calling thread) cancels the queues first, so
  /// no stage is left waiting on one.
  ~StageThreads() {
    for (auto& t : threads_)
      if (t.joinable()) {
        fail(std::make_exception_ptr(std::runtime_error("pipeline abandoned")));
        break;
      }
    join_all();
  }
  StageThreads(const StageThreads&) = delete;
  StageThreads& operator=(const StageThreads&) = delete;

  void spawn(std::function<void()> body) {
    threads_.emplace_back([this, body = std::move(body)] {
      try {
        body();
      } catch (...) {
        fail(std::current_exception());
      }
    });
  }

  /// Records a failure from the calling thread (a stage run inline).
  void fail(std::exception_ptr e) {
    bool first = false;
    {
      std::lock_guard lock(mutex_);
      if (!error_) error_ = e, first = true;
    }
    if (first) cancel_();
  }

  /// Waits for every stage; rethrows the first failure.
  void join() {
    join_all();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void join_all() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  std::function<void()> cancel_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::exception_ptr error_;
};

/// Adds the wall time of its scope to `total` (a stage's busy time).
class BusyTimer {
 public:
  explicit BusyTimer(double& total) : total_(total) {}
  ~BusyTimer() {
    total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  BusyTimer(const BusyTimer&) = delete;
  BusyTimer& operator=(const BusyTimer&) = delete;

 private:
  double& total_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace revmerge
