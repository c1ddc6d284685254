#pragma once
// Merged pieces written on a thread of their own: while one piece is converted and written,
// the next is read and merged. Written in line, every other thread waited for the writes (a
// quarter of a task arithmetic merge's time on two cores when they went through the page
// cache; direct writes mostly wait for the disk).
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <span>
#include <thread>
#include <utility>

#include "methods/classic/classic_internal.hpp"

namespace revmerge {

class WriteBehind {
 public:
  using Sink = std::function<void(std::uint64_t first, std::span<const float> values)>;

  explicit WriteBehind(const Sink& sink) : sink_(sink), thread_([this] { run(); }) {}
  WriteBehind(const WriteBehind&) = delete;
  WriteBehind& operator=(const WriteBehind&) = delete;
  /// Waits for the piece being written. Its error, if any, is dropped: the destructor runs
  /// without finish() only while another error is on its way.
  ~WriteBehind() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }

  /// The buffer to merge the next piece into: never the one being written.
  FloatBuffer& next() { return buffers_[filling_]; }

  /// Gives next() to the sink as the elements from `first`, after the piece before it is
  /// written; rethrows that piece's error.
  void submit(std::uint64_t first) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !busy_; });
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    writing_ = filling_;
    first_ = first;
    busy_ = true;
    filling_ ^= 1;
    lock.unlock();
    changed_.notify_all();
  }

  /// Waits for the last piece to be written; rethrows its error.
  void finish() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !busy_; });
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      changed_.wait(lock, [&] { return busy_ || stop_; });
      if (!busy_) return;
      lock.unlock();
      std::exception_ptr error;
      try {
        sink_(first_, buffers_[writing_]);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      error_ = error;
      busy_ = false;
      changed_.notify_all();
    }
  }

  const Sink& sink_;
  FloatBuffer buffers_[2];
  int filling_ = 0, writing_ = 0;
  std::uint64_t first_ = 0;
  bool busy_ = false, stop_ = false;
  std::exception_ptr error_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::thread thread_;  // last: started once every member it uses is made
};

}  // namespace revmerge
