#pragma once
// File writes done on a thread of their own, from a bounded pool of aligned buffers: the caller
// fills a buffer, queues its write and goes on while the disk takes it. A full-model merge
// leaves its last pieces' writes here and reads the next tensor meanwhile (SLERP's first pass,
// a third of its time, had the disk idle).
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/atomic_output.hpp"

namespace revmerge {

class WriteQueue {
 public:
  /// A buffer aligned to AtomicFile::kDirectAlign (direct writes), from the queue's pool.
  class Block {
   public:
    std::byte* data() const noexcept { return bytes_.get(); }
    std::size_t capacity() const noexcept { return capacity_; }

   private:
    friend class WriteQueue;
    struct Free {
      void operator()(std::byte* p) const noexcept;
    };
    std::unique_ptr<std::byte[], Free> bytes_;
    std::size_t capacity_ = 0;
  };

  /// Holds at most `bytes` of buffers, or more only as one buffer for each caller filling one
  /// while nothing is queued (at least one, whatever its size).
  explicit WriteQueue(std::uint64_t bytes);
  /// Waits for the queued writes; their errors are dropped (the owner drains before it commits,
  /// so an error not yet seen here belongs to an output being thrown away).
  ~WriteQueue();
  WriteQueue(const WriteQueue&) = delete;
  WriteQueue& operator=(const WriteQueue&) = delete;

  /// A buffer of at least `size` bytes, once the queued writes leave room for it; rethrows the
  /// error of a queued write that failed.
  Block take(std::size_t size);
  /// Queues writing the block's bytes [begin, begin + size) at byte `offset` of `file`
  /// (AtomicFile::write_at, whose alignment rules apply); the block goes back to the pool once
  /// written. `file` must outlive the write: its owner waits (wait() or drain()) before closing it.
  void write(Block block, AtomicFile& file, std::uint64_t offset, std::size_t begin, std::size_t size);
  /// Waits for every queued write; rethrows the first failed one's error.
  void drain();
  /// Waits for every queued write; an error stays for the next take() or drain().
  void wait() noexcept;

 private:
  struct Job {
    Block block;
    AtomicFile* file;
    std::uint64_t offset;
    std::size_t begin, size;
  };
  void run();
  void rethrow_locked();

  const std::uint64_t limit_;
  std::uint64_t held_ = 0;  // bytes of every block made and not freed, queued or not
  std::vector<Block> free_;
  std::deque<Job> jobs_;
  bool writing_ = false, stop_ = false;
  std::exception_ptr error_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::thread thread_;  // last: started once every member it uses is made
};

}  // namespace revmerge
