// The caching pool: blocks come back by size class, and a limit frees the cache before a new
// block would take the pool past it (what keeps a merge's memory within its plan).
#include <gtest/gtest.h>

#include <cstdlib>

#include "backend/caching_pool.hpp"

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

}  // namespace
}  // namespace revmerge
