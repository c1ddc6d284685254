#pragma once
// exp and log of doubles from additions, multiplications, divisions and bit moves only, so that
// a routine using them gives the same bits on the host and on a GPU (the C library's and CUDA's
// exp and log may differ in the last bit, and a method whose decisions compare such values —
// arcee_fusion's importances against a quantile — could then keep a different element). Built
// with -ffp-contract=off / --fmad=false like every kernels/ routine; within one ulp of the true
// values (tests/kernels/exp_log_test.cpp measures it against the C library over the ranges the
// methods use).
//
// The arithmetic is the classic one of Sun's freely distributable math library: exp reduces x
// to r = x − k ln2 with |r| ≤ ln2 / 2 and ln2 split in two parts so that k · ln2's high part
// is exact, takes exp(r) from a rational form of a degree-10 minimax polynomial, and scales by
// 2ᵏ; log splits x = 2ᵏ (1 + f) with 1 + f in [√2/2, √2), takes log(1 + f) from
// s = f / (2 + f) and a degree-14 minimax polynomial in s, and adds k ln2 in two parts.
#include <cstdint>
#include <cstring>

#include "kernels/host_device.hpp"

namespace revmerge::kernels {

namespace exp_log_detail {

constexpr double kLn2High = 6.93147180369123816490e-01;  // ln 2's leading 32 bits: k · it is exact
constexpr double kLn2Low = 1.90821492927058770002e-10;   // ln 2 − kLn2High
constexpr double kInvLn2 = 1.44269504088896338700e+00;

REVMERGE_HD_INLINE std::uint64_t bits_of(double x) {
  std::uint64_t b;
  memcpy(&b, &x, 8);
  return b;
}
REVMERGE_HD_INLINE double double_of(std::uint64_t b) {
  double x;
  memcpy(&x, &b, 8);
  return x;
}
/// 2ᵏ for −1022 ≤ k ≤ 1023.
REVMERGE_HD_INLINE double power_of_two(int k) { return double_of(static_cast<std::uint64_t>(k + 1023) << 52); }

}  // namespace exp_log_detail

/// eˣ: +∞ above ln(DBL_MAX), 0 below the smallest subnormal's log, NaN for NaN.
REVMERGE_HD_INLINE double exp_f64(double x) {
  using namespace exp_log_detail;
  if (x != x) return x;
  if (x > 7.09782712893383973096e+02) return double_of(0x7ff0000000000000ull);
  if (x < -7.45133219101941108420e+02) return 0.0;
  // k = x / ln2 rounded to nearest (ties away from 0); |k| ≤ 1075.
  const double kd = x * kInvLn2;
  const int k = static_cast<int>(kd < 0 ? kd - 0.5 : kd + 0.5);
  const double high = x - static_cast<double>(k) * kLn2High;  // exact
  const double low = static_cast<double>(k) * kLn2Low;
  const double r = high - low;
  const double t = r * r;
  const double c =
      r - t * (1.66666666666666019037e-01 +
               t * (-2.77777777770155933842e-03 +
                    t * (6.61375632143793436117e-05 + t * (-1.65339022054652515390e-06 + t * 4.13813679705723846039e-08))));
  const double y = 1.0 - ((low - (r * c) / (2.0 - c)) - high);
  // y · 2ᵏ, in two steps where 2ᵏ itself is not a normal double.
  if (k > 1023) return y * 2.0 * power_of_two(k - 1);
  if (k < -1021) return (y * power_of_two(k + 1000)) * power_of_two(-1000);
  return y * power_of_two(k);
}

/// ln x: −∞ at ±0, NaN below 0 and for NaN, +∞ at +∞.
REVMERGE_HD_INLINE double log_f64(double x) {
  using namespace exp_log_detail;
  std::uint64_t b = bits_of(x);
  if (x != x || x < 0) return double_of(0x7ff8000000000000ull);
  if (x == 0) return -double_of(0x7ff0000000000000ull);
  if (b >= 0x7ff0000000000000ull) return x;  // +∞
  int k = 0;
  if (b < 0x0010000000000000ull) {  // subnormal: scaled by 2⁵⁴ first
    k = -54;
    b = bits_of(x * 18014398509481984.0);
  }
  // x = 2ᵏ · m with m in [√2/2, √2): the exponent chosen by whether the mantissa lies above
  // √2's (0x6a09e…).
  std::uint64_t mantissa = b & 0x000fffffffffffffull;
  k += static_cast<int>(b >> 52) - 1023;
  if (mantissa >= 0x6a09e667f3bcdull) {
    ++k;
    mantissa |= 0x3fe0000000000000ull;  // m in [√2/2, 1)
  } else {
    mantissa |= 0x3ff0000000000000ull;  // m in [1, √2)
  }
  const double f = double_of(mantissa) - 1.0;  // exact
  const double s = f / (2.0 + f);
  const double z = s * s, w = z * z;
  const double t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
  const double t2 =
      z * (6.666666666666735130e-01 +
           w * (2.857142874366239149e-01 + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
  const double r = t2 + t1;
  const double half_f_sq = 0.5 * f * f;
  const double dk = static_cast<double>(k);
  return dk * kLn2High - ((half_f_sq - (s * (half_f_sq + r) + dk * kLn2Low)) - f);
}

}  // namespace revmerge::kernels
