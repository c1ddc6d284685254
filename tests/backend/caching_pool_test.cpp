// The caching pool: blocks come back by size class, and a limit frees the cache before a new
// block would take the pool past it (what keeps a merge's memory within its plan). With fences
// (the CUDA backend's pools) a block given back is handed out again only once the work queued
// before its release has run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>

#include "backend/caching_pool.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

struct Counts {
  int allocs = 0, frees = 0;
};
void* counted_alloc(void* ctx, std::size_t bytes) {
  ++static_cast<Counts*>(ctx)->allocs;
  return std::malloc(bytes);
}
void counted_free(void* ctx, void* p) {
  ++static_cast<Counts*>(ctx)->frees;
  std::free(p);
}

TEST(CachingPool, ReusesBlocksOfAClassAndFreesTheCacheBeforePassingItsLimit) {
  Counts counts;
  CachingPool pool("test pool", &counted_alloc, &counted_free, &counts);
  const std::size_t mib = std::size_t{1} << 20;
  { auto a = pool.allocate(3 * mib), b = pool.allocate(3 * mib); }
  EXPECT_EQ(counts.allocs, 2);
  EXPECT_EQ(pool.use().cached, 6 * mib);
  { auto again = pool.allocate(3 * mib - 100); }  // same class: the cached block
  EXPECT_EQ(counts.allocs, 2);

  // Without a limit, another class is allocated beside the cache.
  { auto c = pool.allocate(5 * mib); }
  EXPECT_EQ(counts.frees, 0);
  EXPECT_EQ(pool.use().peak, 11 * mib);

  // With one, the cache is freed first: in use plus cached never passes it.
  pool.set_limit(8 * mib);
  {
    auto d = pool.allocate(7 * mib);
    EXPECT_EQ(counts.frees, 3);
    EXPECT_EQ(pool.use().in_use, 7 * mib);
    EXPECT_EQ(pool.use().cached, 0u);
  }
  // A block that fits beside the cache keeps it.
  { auto e = pool.allocate(1 * mib); }
  EXPECT_EQ(counts.frees, 3);
  EXPECT_EQ(pool.use().cached, 8 * mib);
}

// Fences as a GPU's events would be: numbered in the order recorded; `completed` is how far the
// queued work has run.
struct FakeStreams {
  std::uintptr_t recorded = 0, completed = 0;
  int waits = 0, live = 0;
  PoolFences fences() {
    PoolFences f;
    f.ctx = this;
    f.record = [](void* c) -> void* {
      auto* s = static_cast<FakeStreams*>(c);
      ++s->live;
      return reinterpret_cast<void*>(++s->recorded);
    };
    f.done = [](void* c, void* fence) {
      return reinterpret_cast<std::uintptr_t>(fence) <= static_cast<FakeStreams*>(c)->completed;
    };
    f.wait = [](void* c, void* fence) {
      auto* s = static_cast<FakeStreams*>(c);
      ++s->waits;
      s->completed = std::max(s->completed, reinterpret_cast<std::uintptr_t>(fence));
    };
    f.drop = [](void* c, void*) { --static_cast<FakeStreams*>(c)->live; };
    return f;
  }
};

TEST(CachingPool, WithFencesABlockIsHandedOutAgainOnlyOnceTheWorkQueuedBeforeItsReleaseRan) {
  Counts counts;
  FakeStreams streams;
  CachingPool pool("test pool", &counted_alloc, &counted_free, &counts, streams.fences());
  const std::size_t kib = 1024;
  void* first = nullptr;
  {
    auto a = pool.allocate(4 * kib);
    first = a.data();
  }  // released with work still queued (fence 1 not complete)
  EXPECT_EQ(pool.use().cached, 4 * kib);
  {
    auto b = pool.allocate(4 * kib);  // so the same class needs a second block
    EXPECT_NE(b.data(), first);
    EXPECT_EQ(counts.allocs, 2);
  }  // fence 2
  streams.completed = 1;  // the work before the first release has run, not the second's
  {
    auto c = pool.allocate(4 * kib);
    EXPECT_EQ(c.data(), first);
    auto d = pool.allocate(4 * kib);  // the second block is still behind fence 2
    EXPECT_EQ(counts.allocs, 3);
  }
  streams.completed = streams.recorded;  // everything queued so far has run
  EXPECT_EQ(streams.waits, 0);  // the host never waited: there was room
  { auto e = pool.allocate(4 * kib), f = pool.allocate(4 * kib), g = pool.allocate(4 * kib); }
  EXPECT_EQ(counts.allocs, 3);  // all three reused

  // At the limit the host waits for the fences rather than let the pool grow.
  pool.set_limit(12 * kib);
  {
    auto h = pool.allocate(8 * kib);  // another class; 12 KiB cached behind fences
    EXPECT_GT(streams.waits, 0);
    EXPECT_EQ(pool.use().cached, 0u);
    EXPECT_EQ(counts.frees, 3);
  }
  pool.release_cached();
  EXPECT_EQ(pool.use().cached, 0u);
  EXPECT_EQ(counts.frees, 4);
  EXPECT_EQ(streams.live, 0);  // every fence recorded was dropped
}

TEST(CachingPool, OutOfMemoryWaitsForTheBlocksInFlightAndRetries) {
  struct Budget {  // a device with 8 KiB
    std::size_t left = 8 * 1024;
    std::map<void*, std::size_t> sizes;
    int frees = 0;
  } budget;
  const auto alloc = [](void* c, std::size_t bytes) -> void* {
    auto* b = static_cast<Budget*>(c);
    if (bytes > b->left) return nullptr;
    b->left -= bytes;
    void* p = std::malloc(bytes);
    b->sizes[p] = bytes;
    return p;
  };
  const auto release = [](void* c, void* p) {
    auto* b = static_cast<Budget*>(c);
    ++b->frees;
    b->left += b->sizes.at(p);
    b->sizes.erase(p);
    std::free(p);
  };
  FakeStreams streams;
  {
    CachingPool pool("test pool", alloc, release, &budget, streams.fences());
    { auto a = pool.allocate(6 * 1024); }  // in flight, 2 KiB left on the "device"
    auto b = pool.allocate(4 * 1024);       // does not fit: wait, free the cache, retry
    EXPECT_EQ(streams.waits, 1);
    EXPECT_EQ(budget.frees, 1);
    EXPECT_THROW(pool.allocate(8 * 1024), device_error);  // nothing left to give back
  }
  EXPECT_EQ(streams.live, 0);
}

}  // namespace
}  // namespace revmerge
