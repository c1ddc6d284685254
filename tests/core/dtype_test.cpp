#include "revmerge/dtype.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "revmerge/error.hpp"

namespace revmerge {
namespace {

// Independent decoders written from the IEEE definitions, in double.
double ref_half(std::uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 31, mant = h & 1023;
  double v;
  if (exp == 0)
    v = std::ldexp(mant, -24);
  else if (exp == 31)
    v = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else
    v = std::ldexp(1024 + mant, exp - 25);
  return sign ? -v : v;
}

double ref_bfloat(std::uint16_t b) {
  const int sign = b >> 15, exp = (b >> 7) & 255, mant = b & 127;
  double v;
  if (exp == 0)
    v = std::ldexp(mant, -133);
  else if (exp == 255)
    v = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else
    v = std::ldexp(128 + mant, exp - 134);
  return sign ? -v : v;
}

// Nearest representable value among the non-negative finite codes of a 16-bit format, ties to
// the even code; values past the largest finite one by half an ulp or more become infinity.
std::uint16_t ref_round(float x, double (*decode)(std::uint16_t), std::uint16_t inf_code) {
  const double ax = std::fabs(static_cast<double>(x));
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  std::uint16_t lo = 0, hi = static_cast<std::uint16_t>(inf_code - 1);  // finite codes, sorted
  if (ax >= decode(hi)) {
    const double ulp = decode(hi) - decode(hi - 1);
    if (ax >= decode(hi) + ulp / 2) return sign | inf_code;
    return sign | hi;
  }
  while (hi - lo > 1) {  // decode(lo) <= ax < decode(hi)
    const auto mid = static_cast<std::uint16_t>((lo + hi) / 2);
    (decode(mid) <= ax ? lo : hi) = mid;
  }
  const double dlo = ax - decode(lo), dhi = decode(hi) - ax;
  const std::uint16_t pick = dlo < dhi ? lo : dhi < dlo ? hi : ((lo & 1) ? hi : lo);
  return sign | pick;
}

TEST(DType, HalfDecodesEveryCodeLikeTheDefinition) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const double ref = ref_half(static_cast<std::uint16_t>(h));
    const float got = f16_to_f32(static_cast<std::uint16_t>(h));
    if (std::isnan(ref))
      EXPECT_TRUE(std::isnan(got)) << h;
    else
      EXPECT_EQ(static_cast<double>(got), ref) << "code " << h;
  }
}

TEST(DType, BFloatDecodesEveryCodeLikeTheDefinition) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const double ref = ref_bfloat(static_cast<std::uint16_t>(b));
    const float got = bf16_to_f32(static_cast<std::uint16_t>(b));
    if (std::isnan(ref))
      EXPECT_TRUE(std::isnan(got)) << b;
    else
      EXPECT_EQ(static_cast<double>(got), ref) << "code " << b;
  }
}

TEST(DType, EveryHalfAndBFloatRoundTripsThroughFloat) {
  for (std::uint32_t c = 0; c < 65536; ++c) {
    const auto code = static_cast<std::uint16_t>(c);
    if (!std::isnan(f16_to_f32(code))) EXPECT_EQ(f32_to_f16(f16_to_f32(code)), code) << c;
    if (!std::isnan(bf16_to_f32(code))) EXPECT_EQ(f32_to_bf16(bf16_to_f32(code)), code) << c;
  }
}

TEST(DType, RoundingMatchesNearestEvenReference) {
  const unsigned seed = 20261128;
  std::mt19937 rng(seed);
  std::vector<float> samples = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 2.98e-8f,
                                6.1e-5f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 3.4e38f};
  std::uniform_int_distribution<std::uint32_t> bits(0, 0xffffffffu);
  while (samples.size() < 20000) {
    const float f = std::bit_cast<float>(bits(rng));
    if (std::isfinite(f)) samples.push_back(f);
  }
  // Also many values in the half range, where rounding is exercised most.
  std::uniform_real_distribution<float> near(-70000.0f, 70000.0f);
  for (int i = 0; i < 20000; ++i) samples.push_back(near(rng) * std::pow(2.0f, -float(i % 40)));
  for (const float f : samples) {
    ASSERT_EQ(f32_to_f16(f), ref_round(f, ref_half, 0x7c00)) << "value " << f << " seed " << seed;
    ASSERT_EQ(f32_to_bf16(f), ref_round(f, ref_bfloat, 0x7f80)) << "value " << f << " seed " << seed;
  }
}

TEST(DType, NonFiniteValuesStayNonFinite) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(f32_to_f16(inf), 0x7c00);
  EXPECT_EQ(f32_to_f16(-inf), 0xfc00);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(nan))));
  EXPECT_EQ(f32_to_bf16(-inf), 0xff80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(nan))));
}

TEST(DType, BufferConversionsRoundTrip) {
  const std::vector<float> v = {0.5f, -1.25f, 3.0f, 1024.0f, -0.0f};
  for (DType t : {DType::F32, DType::F64, DType::F16, DType::BF16}) {
    std::vector<std::byte> buf(v.size() * dtype_size(t));
    convert_from_f32(v.data(), t, buf.data(), v.size());
    std::vector<float> back(v.size());
    convert_to_f32(t, buf.data(), back.data(), v.size());
    EXPECT_EQ(back, v) << dtype_name(t);
    std::vector<double> back64(v.size());
    convert_to_f64(t, buf.data(), back64.data(), v.size());
    for (std::size_t i = 0; i < v.size(); ++i) EXPECT_EQ(back64[i], double(v[i]));
  }
}

TEST(DType, NamesParseAndNonFloatTypesAreRefused) {
  EXPECT_EQ(parse_dtype("BF16"), DType::BF16);
  EXPECT_EQ(parse_dtype("F8_E4M3"), DType::F8_E4M3);
  EXPECT_FALSE(parse_dtype("F128").has_value());
  EXPECT_EQ(dtype_size(DType::I64), 8u);
  float out;
  const std::int32_t i = 7;
  EXPECT_THROW(convert_to_f32(DType::I32, &i, &out, 1), unsupported_error);
  EXPECT_EQ(parse_float_dtype_option("bfloat16", "--dtype"), DType::BF16);
  EXPECT_THROW(parse_float_dtype_option("int8", "--dtype"), usage_error);
  // Every spelling, any case, and torch's prefix; the message lists what this option takes.
  for (const auto* name : {"fp16", "half", "HALF", "float16", "torch.float16", "F16"})
    EXPECT_EQ(parse_float_dtype_option(name, "--dtype"), DType::F16) << name;
  for (const auto* name : {"fp32", "float", "float32", "F32"})
    EXPECT_EQ(parse_float_dtype_option(name, "--dtype"), DType::F32) << name;
  EXPECT_EQ(parse_float_dtype_option("double", "x", {DType::F64}), DType::F64);
  try {
    parse_float_dtype_option("double", "--dtype");
    FAIL() << "f64 accepted where only f32, f16 and bf16 are written";
  } catch (const usage_error& e) {
    EXPECT_NE(std::string(e.what()).find("expected f32, f16 or bf16)"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace revmerge
