#include "methods/classic/magnitude_order.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "revmerge/dtype.hpp"

namespace revmerge {
namespace {

// The order std::stable_sort gives (what DELLA ranked by before), on rows full of ties: values
// rounded to bf16 (as checkpoints hold them), signed zeros, opposite signs of equal magnitude,
// subnormals, and rows long and short.
TEST(MagnitudeOrder, IsTheStableSortOfMagnitudesDescending) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1e-3f);
  MagnitudeOrder sorter;
  for (const std::int64_t n : {0, 1, 2, 7, 300, 4096, 11008}) {
    std::vector<float> x(static_cast<std::size_t>(n));
    for (auto& v : x) {
      const auto kind = rng() % 8;
      v = kind == 0 ? 0.f : kind == 1 ? -0.f : kind == 2 ? 1e-40f * static_cast<float>(rng() % 5) : normal(rng);
      v = bf16_to_f32(f32_to_bf16(v));
      if (rng() % 4 == 0) v = -v;
    }
    std::vector<std::int64_t> expected(x.size()), got(x.size());
    std::iota(expected.begin(), expected.end(), 0);
    std::stable_sort(expected.begin(), expected.end(),
                     [&](std::int64_t a, std::int64_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
    sorter.sort(n, [&](std::int64_t i) { return x[i]; }, got);
    EXPECT_EQ(got, expected) << "n = " << n;
  }
}

}  // namespace
}  // namespace revmerge
