// kernels::exp_f64 and log_f64 against the C library's long-double exp and log: under one ulp
// from the true value over the whole range (random arguments of every exponent, the ranges a
// softmax takes, near the ends and near 1), the special values as IEEE defines them, and their
// normal-range forms bit for bit.
#include "kernels/exp_log.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace revmerge {
namespace {

// |got − truth| in units of the last place of the double nearest to the truth.
double ulps(double got, long double truth) {
  const double nearest = static_cast<double>(truth);
  const double ulp = std::nextafter(std::fabs(nearest), std::numeric_limits<double>::infinity()) - std::fabs(nearest);
  return static_cast<double>(std::fabs(static_cast<long double>(got) - truth) / static_cast<long double>(ulp));
}

TEST(ExpLog, ExpIsWithinOneUlpEverywhere) {
  std::mt19937_64 rng(11);
  std::vector<double> xs = {0.0, -0.0, 1.0, -1.0, 0.5 * std::log(2.0), -0.5 * std::log(2.0), 1e-300, -1e-300,
                            1e-10, -1e-10, 700.0, 709.78, -700.0, -708.3, -708.5, -720.0, -744.0, -745.0};
  std::uniform_real_distribution<double> wide(-745.0, 709.7), narrow(-40.0, 0.0), small(-1.0, 1.0);
  for (int i = 0; i < 200000; ++i) xs.push_back(wide(rng));
  for (int i = 0; i < 200000; ++i) xs.push_back(narrow(rng));  // a softmax's exp(x − max)
  for (int i = 0; i < 100000; ++i) xs.push_back(small(rng) * std::ldexp(1.0, -static_cast<int>(rng() % 60)));
  double worst = 0;
  for (const double x : xs) {
    const double got = kernels::exp_f64(x);
    const long double truth = std::exp(static_cast<long double>(x));
    if (truth < static_cast<long double>(std::numeric_limits<double>::min())) {  // subnormal results
      EXPECT_LE(std::fabs(static_cast<long double>(got) - truth), static_cast<long double>(0x1p-1074)) << x;
      continue;
    }
    const double e = ulps(got, truth);
    worst = std::max(worst, e);
    ASSERT_LT(e, 1.0) << "exp(" << x << ") = " << got;
  }
  EXPECT_GT(worst, 0.0);  // the reference is finer than a double
  RecordProperty("worst_exp_ulps", std::to_string(worst));
}

TEST(ExpLog, LogIsWithinOneUlpEverywhere) {
  std::mt19937_64 rng(12);
  std::vector<double> xs = {1.0, 2.0, 0.5, std::sqrt(2.0), std::sqrt(0.5), std::nextafter(1.0, 2.0),
                            std::nextafter(1.0, 0.0), std::numeric_limits<double>::min(),
                            std::numeric_limits<double>::denorm_min(), std::numeric_limits<double>::max(), 1e-8, 1e8};
  for (int i = 0; i < 300000; ++i) {  // every exponent, subnormals too
    const std::uint64_t b = rng() & 0x7fefffffffffffffull;
    if (b != 0) xs.push_back(std::bit_cast<double>(b));
  }
  std::uniform_real_distribution<double> near_one(-1e-3, 1e-3), ratio(-18.0, 18.0);
  for (int i = 0; i < 100000; ++i) xs.push_back(1.0 + near_one(rng));
  for (int i = 0; i < 100000; ++i) xs.push_back(std::exp(ratio(rng)));  // the ratios of two softmaxes
  double worst = 0;
  for (const double x : xs) {
    const double got = kernels::log_f64(x);
    const long double truth = std::log(static_cast<long double>(x));
    if (truth == 0) {
      ASSERT_EQ(0.0, got) << x;
      continue;
    }
    const double e = ulps(got, truth);
    worst = std::max(worst, e);
    ASSERT_LT(e, 1.0) << "log(" << x << ") = " << got;
  }
  EXPECT_GT(worst, 0.0);
  RecordProperty("worst_log_ulps", std::to_string(worst));
}

TEST(ExpLog, NormalRangeFormsGiveTheSameBits) {
  // exp_f64_normal over [−708, 709] and log_f64_normal over the positive normal doubles: the
  // bits of exp_f64 and log_f64, the ends and every exponent included.
  std::mt19937_64 rng(13);
  std::vector<double> xs = {-708.0, 709.0, 0.0, -0.0, 1e-300, -1e-300, -707.99, 708.99, -0.5 * std::log(2.0)};
  std::uniform_real_distribution<double> wide(-708.0, 709.0), narrow(-1.0, 0.0);
  for (int i = 0; i < 300000; ++i) xs.push_back(i % 2 ? wide(rng) : narrow(rng));
  for (const double x : xs)
    ASSERT_EQ(std::bit_cast<std::uint64_t>(kernels::exp_f64_normal(x)), std::bit_cast<std::uint64_t>(kernels::exp_f64(x)))
        << "exp(" << x << ")";
  std::vector<double> ys = {std::numeric_limits<double>::min(), std::numeric_limits<double>::max(), 1.0,
                            std::nextafter(1.0, 0.0), std::nextafter(1.0, 2.0), 1e-8, 1e8, std::sqrt(2.0)};
  for (int i = 0; i < 300000; ++i) {
    const std::uint64_t b = rng() % (0x7ff0000000000000ull - 0x0010000000000000ull) + 0x0010000000000000ull;
    ys.push_back(std::bit_cast<double>(b));
  }
  for (const double y : ys)
    ASSERT_EQ(std::bit_cast<std::uint64_t>(kernels::log_f64_normal(y)), std::bit_cast<std::uint64_t>(kernels::log_f64(y)))
        << "log(" << y << ")";
}

TEST(ExpLog, SpecialValuesAreIeees) {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(1.0, kernels::exp_f64(0.0));
  EXPECT_EQ(1.0, kernels::exp_f64(-0.0));
  EXPECT_EQ(inf, kernels::exp_f64(710.0));
  EXPECT_EQ(inf, kernels::exp_f64(inf));
  EXPECT_EQ(0.0, kernels::exp_f64(-746.0));
  EXPECT_EQ(0.0, kernels::exp_f64(-inf));
  EXPECT_TRUE(std::isnan(kernels::exp_f64(nan)));
  EXPECT_EQ(0.0, kernels::log_f64(1.0));
  EXPECT_FALSE(std::signbit(kernels::log_f64(1.0)));
  EXPECT_EQ(-inf, kernels::log_f64(0.0));
  EXPECT_EQ(-inf, kernels::log_f64(-0.0));
  EXPECT_EQ(inf, kernels::log_f64(inf));
  EXPECT_TRUE(std::isnan(kernels::log_f64(-1.0)));
  EXPECT_TRUE(std::isnan(kernels::log_f64(-inf)));
  EXPECT_TRUE(std::isnan(kernels::log_f64(nan)));
}

}  // namespace
}  // namespace revmerge
