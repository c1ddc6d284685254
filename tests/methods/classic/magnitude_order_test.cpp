#include "methods/classic/magnitude_order.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "revmerge/dtype.hpp"

namespace revmerge {
namespace {

// The order std::stable_sort gives (what DELLA ranked by before), on rows full of ties: values
// rounded to bf16 (as checkpoints hold them), differences of two such (task vectors: most share
// their low bits, a few not), full f32 values (every bit differs: the most digits), rows of one
// value, with signed zeros, opposite signs of equal magnitude, subnormals, and rows long and
// short (the sort's stretches: a row shorter than them, and the rest the last one takes).
TEST(MagnitudeOrder, IsTheStableSortOfMagnitudesDescending) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1e-3f);
  const auto bf16 = [](float v) { return bf16_to_f32(f32_to_bf16(v)); };
  MagnitudeOrder sorter;
  for (const char* values : {"bf16", "bf16 differences", "f32", "one value"})
    for (const std::int64_t n : {0, 1, 2, 3, 5, 7, 300, 4096, 4097, 11008}) {
      const std::string family = values;
      std::vector<float> x(static_cast<std::size_t>(n));
      for (auto& v : x) {
        const auto kind = rng() % 8;
        v = kind == 0 ? 0.f : kind == 1 ? -0.f : kind == 2 ? 1e-40f * static_cast<float>(rng() % 5) : normal(rng);
        if (family == "bf16") v = bf16(v);
        if (family == "bf16 differences") {
          const float base = bf16(normal(rng) * 20);
          v = bf16(base + v) - base;
        }
        if (family == "one value") v = 0.25f;
        if (rng() % 4 == 0) v = -v;
      }
      std::vector<std::int64_t> expected(x.size()), got(x.size());
      std::iota(expected.begin(), expected.end(), 0);
      std::stable_sort(expected.begin(), expected.end(),
                       [&](std::int64_t a, std::int64_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
      sorter.sort(n, [&](std::int64_t i) { return x[i]; }, got);
      EXPECT_EQ(got, expected) << family << ", n = " << n;
    }
}

}  // namespace
}  // namespace revmerge
