#include "core/write_queue.hpp"

#include <algorithm>
#include <new>
#include <utility>

namespace revmerge {

namespace {
constexpr std::align_val_t kAlign{AtomicFile::kDirectAlign};
}

void WriteQueue::Block::Free::operator()(std::byte* p) const noexcept { ::operator delete[](p, kAlign); }

WriteQueue::WriteQueue(std::uint64_t bytes) : limit_(bytes), thread_([this] { run(); }) {}

WriteQueue::~WriteQueue() {
  wait();
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

void WriteQueue::rethrow_locked() {
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

WriteQueue::Block WriteQueue::take(std::size_t size) {
  std::unique_lock lock(mutex_);
  for (;;) {
    rethrow_locked();
    const auto fits = std::find_if(free_.begin(), free_.end(), [&](const Block& b) { return b.capacity_ >= size; });
    if (fits != free_.end()) {
      Block b = std::move(*fits);
      free_.erase(fits);
      return b;
    }
    // A new block: within the bound, or when no queued write will bring one back (every block,
    // if any, is in a caller's hands) and waiting would wait forever.
    if (held_ + size <= limit_ || (free_.empty() && jobs_.empty() && !writing_)) {
      // Pages are first touched by the caller's fill (not zeroed here: it writes every byte it
      // queues).
      const std::size_t capacity = (size + AtomicFile::kDirectAlign - 1) / AtomicFile::kDirectAlign *
                                   AtomicFile::kDirectAlign;
      Block b;
      b.bytes_.reset(static_cast<std::byte*>(::operator new[](std::max<std::size_t>(capacity, 1), kAlign)));
      b.capacity_ = capacity;
      held_ += capacity;
      return b;
    }
    if (!free_.empty()) {  // too small for this size: freed to make room for a larger one
      held_ -= free_.back().capacity_;
      free_.pop_back();
      continue;
    }
    changed_.wait(lock);
  }
}

void WriteQueue::write(Block block, AtomicFile& file, std::uint64_t offset, std::size_t begin, std::size_t size) {
  {
    std::lock_guard lock(mutex_);
    jobs_.push_back({std::move(block), &file, offset, begin, size});
  }
  changed_.notify_all();
}

void WriteQueue::wait() noexcept {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return jobs_.empty() && !writing_; });
}

void WriteQueue::drain() {
  wait();
  std::lock_guard lock(mutex_);
  rethrow_locked();
}

void WriteQueue::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return !jobs_.empty() || stop_; });
    if (jobs_.empty()) return;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    writing_ = true;
    // After a failed write the rest are not written: the output they belong to is discarded.
    const bool skip = error_ != nullptr;
    lock.unlock();
    std::exception_ptr error;
    if (!skip) {
      try {
        job.file->write_at(job.offset, job.block.data() + job.begin, job.size);
      } catch (...) {
        error = std::current_exception();
      }
    }
    lock.lock();
    if (error && !error_) error_ = error;
    free_.push_back(std::move(job.block));
    writing_ = false;
    changed_.notify_all();
  }
}

}  // namespace revmerge
