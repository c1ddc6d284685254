#include "methods/classic/write_behind.hpp"

#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

namespace revmerge {
namespace {

// Each piece reaches the sink whole, in the order given, while the next one is being filled.
TEST(WriteBehind, PiecesReachTheSinkInOrderWithTheirValues) {
  std::vector<std::pair<std::uint64_t, std::vector<float>>> got;
  const WriteBehind::Sink sink = [&](std::uint64_t first, std::span<const float> v) {
    got.emplace_back(first, std::vector<float>(v.begin(), v.end()));
  };
  {
    WriteBehind behind(sink);
    for (int k = 0; k < 5; ++k) {
      auto& next = behind.next();
      next.assign(static_cast<std::size_t>(k + 1), static_cast<float>(k));
      behind.submit(static_cast<std::uint64_t>(10 * k));
    }
    behind.finish();
  }
  ASSERT_EQ(got.size(), 5u);
  for (int k = 0; k < 5; ++k) {
    EXPECT_EQ(got[k].first, static_cast<std::uint64_t>(10 * k));
    EXPECT_EQ(got[k].second, std::vector<float>(static_cast<std::size_t>(k + 1), static_cast<float>(k)));
  }
}

// A write that fails stops the merge: its error comes back from the next submit or finish.
TEST(WriteBehind, ASinksErrorComesBackToTheMerge) {
  int calls = 0;
  const WriteBehind::Sink sink = [&](std::uint64_t first, std::span<const float>) {
    ++calls;
    if (first == 1) throw std::runtime_error("disk full");
  };
  WriteBehind behind(sink);
  behind.next().assign(1, 0.f);
  behind.submit(0);
  behind.next().assign(1, 0.f);
  behind.submit(1);
  behind.next().assign(1, 0.f);
  EXPECT_THROW(
      {
        behind.submit(2);
        behind.finish();
      },
      std::runtime_error);
  EXPECT_LE(calls, 3);
}

// Left without finish() (another error on its way), it waits for the piece in flight and ends.
TEST(WriteBehind, EndsCleanlyWithAPieceInFlight) {
  int calls = 0;
  const WriteBehind::Sink sink = [&](std::uint64_t, std::span<const float>) { ++calls; };
  {
    WriteBehind behind(sink);
    behind.next().assign(3, 1.f);
    behind.submit(0);
  }
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace revmerge
