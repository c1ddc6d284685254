// The shared functors called directly on the host: the GPU-only forms are checked here on every
// machine, against the forms the CPU backend runs.
#include "kernels/rmm_kernels.hpp"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace revmerge {
namespace {

TEST(Kernels, ElementAndRowPermutesAgree) {
  const std::int64_t d0 = 4, d1 = 3, d2 = 5;
  std::vector<float> src(d0 * d1 * d2);
  std::iota(src.begin(), src.end(), 0.0f);
  // dst[i0, i1, i2] = src[i2, i1, i0] with src shaped d2 × d1 × d0.
  const std::int64_t s0 = 1, s1 = d0, s2 = d1 * d0;
  std::vector<float> by_element(src.size()), by_row(src.size());
  const kernels::Permute3 e{src.data(), s0, s1, s2, d1, d2, by_element.data()};
  const kernels::Permute3Rows r{src.data(), s0, s1, s2, d1, d2, by_row.data()};
  for (std::int64_t i = 0; i < d0 * d1 * d2; ++i) e(i);
  for (std::int64_t i = 0; i < d0 * d1; ++i) r(i);
  EXPECT_EQ(by_element, by_row);
  for (std::int64_t i0 = 0; i0 < d0; ++i0)
    for (std::int64_t i1 = 0; i1 < d1; ++i1)
      for (std::int64_t i2 = 0; i2 < d2; ++i2)
        EXPECT_EQ(by_row[(i0 * d1 + i1) * d2 + i2], src[(i2 * d1 + i1) * d0 + i0]);
}

}  // namespace
}  // namespace revmerge
