// widen_finite (core/widen.hpp): the files' values widened, checked and a base subtracted in one
// pass give the bits of the plain conversion followed by the subtraction, and the index of the
// first value that is not finite, wherever it lies among the runs the loop works in.
#include "core/widen.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace revmerge {
namespace {

// `count` values of `type` from normal f32 values, with ±Inf or NaN written at `bad` positions.
std::vector<unsigned char> values_of(DType type, std::size_t count, const std::vector<std::size_t>& bad,
                                     unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> v(count);
  for (auto& x : v) x = normal(rng);
  const float specials[] = {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN()};
  for (std::size_t k = 0; k < bad.size(); ++k) v[bad[k]] = specials[k % 3];
  std::vector<unsigned char> bytes(count * dtype_size(type));
  if (type == DType::F64)
    for (std::size_t i = 0; i < count; ++i) {
      const double d = v[i];
      std::memcpy(bytes.data() + 8 * i, &d, 8);
    }
  else
    convert_from_f32(v.data(), type, bytes.data(), count);
  return bytes;
}

TEST(WidenFinite, GivesTheConversionLessMinusAndTheFirstNonFiniteIndex) {
  constexpr std::size_t kCount = 5000;  // runs of 2048: the bad values fall in each
  const std::vector<std::vector<std::size_t>> bads = {{}, {0}, {2047}, {2048, 10}, {4999}, {3000, 3001, 4096}};
  for (const DType type : {DType::BF16, DType::F16, DType::F32, DType::F64})
    for (const auto& bad : bads)
      for (const bool subtract : {false, true}) {
        const auto bytes = values_of(type, kCount, bad, 11);
        std::vector<float> minus(kCount);
        std::mt19937 rng(3);
        std::uniform_real_distribution<float> u(-1.0f, 1.0f);
        for (auto& m : minus) m = u(rng);
        std::vector<float> expected(kCount), got(kCount, 7.0f);
        convert_to_f32(type, bytes.data(), expected.data(), kCount);
        std::size_t first = kCount;
        for (std::size_t i = 0; i < kCount; ++i)
          if (!std::isfinite(expected[i])) {
            first = i;
            break;
          }
        if (subtract)
          for (std::size_t i = 0; i < kCount; ++i) expected[i] -= minus[i];
        const auto at = widen_finite(type, bytes.data(), got.data(), kCount, subtract ? minus.data() : nullptr);
        const std::string what = std::string(dtype_name(type)) + (subtract ? " less minus" : "") + ", " +
                                 std::to_string(bad.size()) + " non-finite";
        ASSERT_EQ(first, at) << what;
        // Where a value is not finite the loop may stop at the end of that run; before it, every
        // value is the conversion's bits.
        const std::size_t checked = first == kCount ? kCount : first / 2048 * 2048;
        for (std::size_t i = 0; i < checked; ++i)
          ASSERT_EQ(std::bit_cast<std::uint32_t>(expected[i]), std::bit_cast<std::uint32_t>(got[i]))
              << what << ", element " << i;
      }
}

TEST(WidenFinite, AnF64BeyondF32sRangeIsNotFinite) {
  const double v[3] = {1.0, 1e300, -2.0};  // 1e300 rounds to Inf in f32
  float out[3];
  EXPECT_EQ(1u, widen_finite(DType::F64, v, out, 3, nullptr));
}

}  // namespace
}  // namespace revmerge
