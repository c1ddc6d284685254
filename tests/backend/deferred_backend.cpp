// The deferred backend (deferred_backend.hpp): the CPU backend's arithmetic behind per-stream
// queues that run at synchronize, with memory of its own.
#include "backend/deferred_backend.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "revmerge/error.hpp"

namespace revmerge::test {
namespace {

using i64 = std::int64_t;

class DeferredBackend final : public Backend {
 public:
  explicit DeferredBackend(int threads) : cpu_(make_cpu_backend({threads, 0})) {}

  ~DeferredBackend() override {
    // Work nobody waited for is dropped (it may use memory that is gone); then every block,
    // quarantined or still held by a leaked buffer, is freed.
    streams_.clear();
    for (auto& [p, block] : blocks_) std::free(p);
  }

  BackendKind kind() const noexcept override { return BackendKind::cpu; }
  std::string name() const override { return "deferred (" + cpu_->name() + ")"; }

  DeviceBuffer allocate(std::size_t bytes) override { return allocate_block(bytes, false); }
  DeviceBuffer allocate_staging(std::size_t bytes) override { return allocate_block(bytes, true); }
  bool shares_host_memory() const noexcept override { return false; }
  MemoryUse memory_use() const override {
    std::lock_guard lock(mutex_);
    return {in_use_, 0, peak_};
  }
  std::size_t memory_available() const override { return cpu_->memory_available(); }
  void limit_cache(std::size_t) override {}  // nothing is cached
  Stream create_stream() override {
    std::lock_guard lock(mutex_);
    return {reinterpret_cast<void*>(++last_stream_)};
  }

  void upload(void* dst, const void* src, std::size_t bytes, Stream s) override {
    if (bytes == 0) return;  // as CUDA's (an empty buffer's pointer may be null)
    if (is_staging(src, bytes)) {  // pinned: read when the copy runs
      enqueue(s, [=] { std::memcpy(dst, src, bytes); });
      return;
    }
    // Pageable: CUDA stages the bytes before the call returns.
    auto copy = std::make_shared<std::vector<std::byte>>(
        static_cast<const std::byte*>(src), static_cast<const std::byte*>(src) + bytes);
    enqueue(s, [=] { std::memcpy(dst, copy->data(), bytes); });
  }
  void download(void* dst, const void* src, std::size_t bytes, Stream s) override {
    if (bytes == 0) return;
    enqueue(s, [=] { std::memcpy(dst, src, bytes); });
  }
  void synchronize(Stream s) override { drain(queue(s)); }

  // An event is a point in its stream's queue: the number of ops queued there before it.
  Event record_event(Stream s) override {
    Queue& q = queue(s);
    std::lock_guard lock(q.mutex);
    return Event(new Mark{&q, q.queued}, [](void*, void* h) { delete static_cast<Mark*>(h); },
                 nullptr);
  }
  void wait_event(Stream s, const Event& e) override {
    const Mark mark = *static_cast<const Mark*>(e.handle());
    enqueue(s, [this, mark] { drain(*mark.queue, mark.count); });
  }
  void synchronize_event(const Event& e) override {
    const Mark& mark = *static_cast<const Mark*>(e.handle());
    drain(*mark.queue, mark.count);
  }
  bool query_event(const Event& e) override {  // nothing runs before someone waits for it
    const Mark& mark = *static_cast<const Mark*>(e.handle());
    std::lock_guard lock(mark.queue->mutex);
    return mark.queue->done >= mark.count;
  }
  void copy(void* dst, const void* src, std::size_t bytes, Stream s) override {
    enqueue(s, [=] { std::memmove(dst, src, bytes); });
  }
  void fill(void* dst, unsigned char value, std::size_t bytes, Stream s) override {
    enqueue(s, [=] { std::memset(dst, value, bytes); });
  }

  void gemm(Op op_a, Op op_b, float alpha, const MatBatch& a, const MatBatch& b, float beta,
            const MatBatch& c, Stream s) override {
    enqueue(s, [=, this] { cpu_->gemm(op_a, op_b, alpha, a, b, beta, c, {}); });
  }
  // Split-K as a GPU would ask for it, so the chunked error Grams run on every machine.
  i64 split_k_hint(i64, i64, i64, i64 inner) const override { return inner >= 16 ? 4 : 1; }
  void rmm_positions(const kernels::RmmModuleArgs& args, Stream s) override {
    enqueue(s, [args, this] { cpu_->rmm_positions(args, {}); });
  }
  void rmm_error_terms(const kernels::RmmErrorArgs& args, Stream s) override {
    enqueue(s, [args, this] { cpu_->rmm_error_terms(args, {}); });
  }
  void rmm_candidate_grams(const kernels::RmmCandidateArgs& args, Stream s) override {
    enqueue(s, [args, this] { cpu_->rmm_candidate_grams(args, {}); });
  }
  void materialize(const kernels::MaterializeArgs& args, Stream s) override {
    enqueue(s, [args, this] { cpu_->materialize(args, {}); });
  }
  void elementwise(const kernels::ElementwiseStep& step, Stream s) override {
    enqueue(s, [step, this] { cpu_->elementwise(step, {}); });
  }

  void gemm_f64(Op op_a, i64 rows, i64 cols, i64 inner, const double* a, i64 lda, i64 stride_a,
                const double* b, i64 ldb, i64 stride_b, double* c, i64 ldc, i64 stride_c, i64 batch,
                Stream s) override {
    enqueue(s, [=, this] {
      cpu_->gemm_f64(op_a, rows, cols, inner, a, lda, stride_a, b, ldb, stride_b, c, ldc, stride_c,
                     batch, {});
    });
  }
  void cholesky_inverse_f64(double* g, double* inverse, i64 n, i64 batch, int* info,
                            Stream s) override {
    enqueue(s, [=, this] { cpu_->cholesky_inverse_f64(g, inverse, n, batch, info, {}); });
  }
  void householder_qr_f64(double* x, i64 rows, i64 cols, double* r_host, Stream s) override {
    synchronize(s);  // documented to wait for the stream
    cpu_->householder_qr_f64(x, rows, cols, r_host, {});
  }
  std::size_t householder_qr_f64_work_bytes(i64 rows, i64 cols) override {
    return cpu_->householder_qr_f64_work_bytes(rows, cols);
  }
  void sum_squares_f64(const double* x, i64 count, i64 batch, double* out, Stream s) override {
    enqueue(s, [=, this] { cpu_->sum_squares_f64(x, count, batch, out, {}); });
  }
  void delta_f64(const void* ft, DType ft_type, const void* base, DType base_type, double* delta,
                 i64 count, std::uint64_t* first_bad, Stream s) override {
    enqueue(s, [=, this] {
      cpu_->delta_f64(ft, ft_type, base, base_type, delta, count, first_bad, {});
    });
  }
  void gaussian_f64(double* out, i64 count, std::uint64_t seed, std::uint64_t stream_id,
                    Stream s) override {
    enqueue(s, [=, this] { cpu_->gaussian_f64(out, count, seed, stream_id, {}); });
  }
  void cholesky_qr_verdict_f64(const double* r2, const int* infos, i64 n, i64 batch, double tolerance,
                               int* held, Stream st) override {
    enqueue(st, [=, this] { cpu_->cholesky_qr_verdict_f64(r2, infos, n, batch, tolerance, held, {}); });
  }
  void lora_stacks_f64(const double* u, const double* v, const double* s, i64 tasks, i64 in,
                       i64 out, i64 k, i64 r, float* a, float* b, Stream st) override {
    enqueue(st, [=, this] { cpu_->lora_stacks_f64(u, v, s, tasks, in, out, k, r, a, b, {}); });
  }
  void gram_f64(const float* x, i64 rows, i64 cols, double* g, Stream s) override {
    enqueue(s, [=, this] { cpu_->gram_f64(x, rows, cols, g, {}); });
  }
  void symmetric_eigen_f64(double* a, i64 n, double* w, int* info, Stream s) override {
    enqueue(s, [=, this] { cpu_->symmetric_eigen_f64(a, n, w, info, {}); });
  }
  void gemm_f64_rows(Op op_a, Op op_b, i64 rows, i64 cols, i64 inner, double alpha, const double* a, i64 lda,
                     const double* b, i64 ldb, double* c, i64 ldc, Stream s) override {
    enqueue(s, [=, this] { cpu_->gemm_f64_rows(op_a, op_b, rows, cols, inner, alpha, a, lda, b, ldb, c, ldc, {}); });
  }

 private:
  struct Queue {
    std::recursive_mutex run;  // one drain at a time (an op may wait on an event of its own queue)
    std::mutex mutex;          // ops and counters
    std::deque<std::function<void()>> ops;
    std::size_t pending = 0;   // queued or running
    std::size_t queued = 0;    // ever queued
    std::size_t done = 0;      // ever finished (or dropped after a failure)
  };
  struct Mark {
    Queue* queue;
    std::size_t count;
  };
  struct Block {
    std::size_t bytes;
    bool staging, freed;
  };

  Queue& queue(Stream s) {
    std::lock_guard lock(mutex_);
    auto& q = streams_[s.handle];
    if (!q) q = std::make_unique<Queue>();
    return *q;
  }

  void enqueue(Stream s, std::function<void()> op) {
    Queue& q = queue(s);
    std::lock_guard lock(q.mutex);
    q.ops.push_back(std::move(op));
    ++q.pending;
    ++q.queued;
  }

  // Runs the queue's ops until `until` of them have ever finished (all by default).
  void drain(Queue& q, std::size_t until = ~std::size_t{0}) {
    std::lock_guard run(q.run);
    for (;;) {
      std::function<void()> op;
      {
        std::lock_guard lock(q.mutex);
        if (q.ops.empty() || q.done >= until) break;
        op = std::move(q.ops.front());
        q.ops.pop_front();
      }
      try {
        op();
      } catch (...) {  // a failed stream drops what was queued after the failure
        std::lock_guard lock(q.mutex);
        q.pending -= 1 + q.ops.size();
        q.done += 1 + q.ops.size();
        q.ops.clear();
        throw;
      }
      std::lock_guard lock(q.mutex);
      --q.pending;
      ++q.done;
    }
    std::lock_guard lock(mutex_);
    release_quarantine_if_idle();
    if (const auto bytes = std::exchange(written_after_free_, 0))
      throw device_error(
          "deferred backend: work queued before a buffer was freed wrote into it "
          "afterwards (" +
          std::to_string(bytes) + " bytes)");
  }

  // With no work queued or running anywhere, no op can still reach a freed block. A block
  // freed while work was queued must still hold its NaN: had that work written into it after
  // the free, a GPU's pool could have handed it to another stream in between: such blocks
  // are counted in written_after_free_, for the next synchronize to report.
  void release_quarantine_if_idle() {
    for (auto& [handle, q] : streams_) {
      std::lock_guard lock(q->mutex);
      if (q->pending) return;
    }
    for (auto it = blocks_.begin(); it != blocks_.end();)
      if (it->second.freed) {
        const auto* b = static_cast<const unsigned char*>(it->first);
        if (std::any_of(b, b + it->second.bytes, [](unsigned char x) { return x != 0xff; }))
          written_after_free_ += it->second.bytes;
        std::free(it->first);
        it = blocks_.erase(it);
      } else {
        ++it;
      }
  }

  DeviceBuffer allocate_block(std::size_t bytes, bool staging) {
    const std::size_t size = (std::max<std::size_t>(bytes, 1) + 255) / 256 * 256;
    void* p = std::aligned_alloc(256, size);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0xff, size);  // NaN in every float type: unwritten memory shows
    std::lock_guard lock(mutex_);
    blocks_[p] = {size, staging, false};
    if (!staging) {  // device memory; staging buffers are host memory, as on a GPU
      in_use_ += size;
      peak_ = std::max(peak_, in_use_);
    }
    return DeviceBuffer(p, bytes, &DeferredBackend::release, this);
  }

  static void release(void* ctx, void* p) {
    auto* self = static_cast<DeferredBackend*>(ctx);
    std::lock_guard lock(self->mutex_);
    auto& block = self->blocks_.at(p);
    std::memset(p, 0xff, block.bytes);  // what queued work still reads of it is NaN
    block.freed = true;
    if (!block.staging) self->in_use_ -= block.bytes;
    self->release_quarantine_if_idle();
  }

  bool is_staging(const void* p, std::size_t bytes) const {
    std::lock_guard lock(mutex_);
    auto it = blocks_.upper_bound(const_cast<void*>(p));
    if (it == blocks_.begin()) return false;
    --it;
    const auto* begin = static_cast<const std::byte*>(it->first);
    const auto* at = static_cast<const std::byte*>(p);
    return it->second.staging && !it->second.freed && at + bytes <= begin + it->second.bytes;
  }

  std::unique_ptr<Backend> cpu_;
  mutable std::mutex mutex_;  // blocks_, streams_, counters
  std::map<void*, Block> blocks_;
  std::map<void*, std::unique_ptr<Queue>> streams_;
  std::size_t in_use_ = 0, peak_ = 0, written_after_free_ = 0;
  std::uintptr_t last_stream_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_deferred_backend(int threads) {
  return std::make_unique<DeferredBackend>(threads);
}

}  // namespace revmerge::test
