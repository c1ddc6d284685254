#pragma once
// exp and log of doubles from additions, multiplications, divisions, fused multiply-adds and bit
// moves only, so that a routine using them gives the same bits on the host and on a GPU (the C
// library's and CUDA's exp and log may differ in the last bit, and a method whose decisions
// compare such values — arcee_fusion's importances against a quantile — could then keep a
// different element). Built with -ffp-contract=off / --fmad=false like every kernels/ routine:
// the fused multiply-adds are the written ::fma calls (one rounding each on every machine; the
// polynomials' Horner steps and the reduction), which took a fifth off arcee_fusion's rows on a
// CPU with FMA (one without it calls the C library's, correct and slow). Within one ulp of the
// true values (tests/kernels/exp_log_test.cpp measures it against the C library over the ranges
// the methods use).
//
// The arithmetic is the classic one of Sun's freely distributable math library: exp reduces x
// to r = x − k ln2 with |r| ≤ ln2 / 2 and ln2 split in two parts so that k · ln2's high part
// is exact, takes exp(r) from a rational form of a degree-10 minimax polynomial, and scales by
// 2ᵏ; log splits x = 2ᵏ (1 + f) with 1 + f in [√2/2, √2), takes log(1 + f) from
// s = f / (2 + f) and a degree-14 minimax polynomial in s, and adds k ln2 in two parts. Both
// are written without branches (integers moved through a double's bits, the special cases
// selected at the end), so that the host's loops over them vectorize.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

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
constexpr double kShifter = 0x1.8p52;  // x + it holds round(x) in its low bits, for |x| < 2⁵¹
constexpr double kInf = std::numeric_limits<double>::infinity(), kNaN = std::numeric_limits<double>::quiet_NaN();


// exp's reduction and polynomial: y = e^r (in [√2/2, √2] up to rounding) with x = k ln2 + r,
// k left in the low bits of `shifted`. c must lie within [−746, 710].
REVMERGE_HD_INLINE double exp_core(double c, double& shifted) {
  // k = c / ln2 rounded to nearest even, in the low bits of `shifted`; |k| ≤ 1077.
  shifted = ::fma(c, kInvLn2, kShifter);
  const double kd = shifted - kShifter;
  const double high = ::fma(-kd, kLn2High, c);  // exact (as the product and the difference are)
  const double low = kd * kLn2Low;
  const double r = high - low;
  const double t = r * r;
  const double q = ::fma(t, ::fma(t, ::fma(t, ::fma(t, 4.13813679705723846039e-08, -1.65339022054652515390e-06),
                                           6.61375632143793436117e-05),
                                  -2.77777777770155933842e-03),
                         1.66666666666666019037e-01);
  const double p = ::fma(-t, q, r);
  return 1.0 - ((low - (r * p) / (2.0 - p)) - high);
}

// log's reduction and polynomial for b, the bits of a positive normal double (scaled by 2^54
// first where it was subnormal: `scaled_by_54` 1).
REVMERGE_HD_INLINE double log_core(std::uint64_t b, std::uint64_t scaled_by_54) {
  // x = 2ᵏ · m with m in [√2/2, √2): the exponent chosen by whether the mantissa lies above
  // √2's (0x6a09e…).
  const std::uint64_t mantissa = b & 0x000fffffffffffffull;
  const std::uint64_t above = static_cast<std::uint64_t>(mantissa >= 0x6a09e667f3bcdull);
  const double f = double_of(mantissa | (0x3ff0000000000000ull - (above << 52))) - 1.0;  // exact
  // k in the low bits of a double near kShifter: the exponent, less the bias and any scaling.
  const std::uint64_t k_bits = bits_of(kShifter) + ((b >> 52) & 0x7ff) - 1023 - 54 * scaled_by_54 + above;
  const double dk = double_of(k_bits) - kShifter;  // exact
  const double s = f / (2.0 + f);
  const double z = s * s, w = z * z;
  const double t1 = w * ::fma(w, ::fma(w, 1.531383769920937332e-01, 2.222219843214978396e-01), 3.999999999940941908e-01);
  const double t2 =
      z * ::fma(w, ::fma(w, ::fma(w, 1.479819860511658591e-01, 1.818357216161805012e-01), 2.857142874366239149e-01),
                6.666666666666735130e-01);
  const double r = t2 + t1;
  const double half_f_sq = 0.5 * f * f;
  return ::fma(dk, kLn2High, -((half_f_sq - ::fma(s, half_f_sq + r, dk * kLn2Low)) - f));
}

}  // namespace exp_log_detail

/// eˣ: +∞ above ln(DBL_MAX), 0 below the smallest subnormal's log, NaN for NaN. Without
/// branches (the special cases chosen at the end), so that a host loop of them vectorizes.
REVMERGE_HD_INLINE double exp_f64(double x) {
  using namespace exp_log_detail;
  const double c = x < -746.0 ? -746.0 : x > 710.0 ? 710.0 : x;  // NaN stays NaN: the end picks it
  double shifted;
  const double y = exp_core(c, shifted);
  // y · 2ᵏ as y · 2ᵏ¹ · 2ᵏ², k = k1 + k2 with both within a normal double's exponents (one
  // rounding, the last, where the result is subnormal).
  const std::uint64_t k_biased = bits_of(shifted) - bits_of(kShifter) + 2048;  // k + 2048 > 0
  const std::uint64_t k1_biased = k_biased >> 1;                                 // ⌊k/2⌋ + 1024
  const double scaled =
      y * double_of((k1_biased - 1024 + 1023) << 52) * double_of((k_biased - k1_biased - 1024 + 1023) << 52);
  return x != x ? x : x > 7.09782712893383973096e+02 ? kInf : x < -7.45133219101941108420e+02 ? 0.0 : scaled;
}

/// exp_f64(x) for x in [−708, 709] (its result a normal double), the same bits with less work:
/// no clamp or special cases, and 2ᵏ in one product (both of exp_f64's are exact there). For a
/// host loop whose arguments are known to lie there (arcee_fusion's rows).
REVMERGE_HD_INLINE double exp_f64_normal(double x) {
  using namespace exp_log_detail;
  double shifted;
  const double y = exp_core(x, shifted);
  return y * double_of((bits_of(shifted) - bits_of(kShifter) + 1023) << 52);
}

/// ln x: −∞ at ±0, NaN below 0 and for NaN, +∞ at +∞. Without branches, as exp_f64.
REVMERGE_HD_INLINE double log_f64(double x) {
  using namespace exp_log_detail;
  // A positive subnormal (its bits between those of 0 and of the least normal) scaled by 2⁵⁴
  // first; the comparisons as integers, so that nothing branches.
  const std::uint64_t raw = bits_of(x);
  const std::uint64_t subnormal = static_cast<std::uint64_t>(raw - 1 < 0x000fffffffffffffull);
  const std::uint64_t b = bits_of(x * double_of(0x3ff0000000000000ull + (subnormal * 54 << 52)));  // × 2⁵⁴ or 1
  const double core = log_core(b, subnormal);
  // The special cases blended in by masks: a select here would let the compiler move the
  // arithmetic above into a branch, and then no longer vectorize the loop.
  const std::uint64_t zero = static_cast<std::uint64_t>((raw << 1) == 0);
  const std::uint64_t infinite = static_cast<std::uint64_t>(raw == 0x7ff0000000000000ull);
  const std::uint64_t special = zero | infinite | (raw >> 63) | static_cast<std::uint64_t>(raw > 0x7ff0000000000000ull);
  const std::uint64_t value = (0xfff0000000000000ull & (0 - zero)) | (raw & (0 - infinite)) |
                              (0x7ff8000000000000ull & (0 - (1 - zero - infinite)));  // −∞, +∞ or NaN
  return double_of((bits_of(core) & (special - 1)) | (value & (0 - special)));
}

/// log_f64(x) for a positive normal finite x, the same bits with less work (no subnormal
/// scaling or special cases).
REVMERGE_HD_INLINE double log_f64_normal(double x) { return exp_log_detail::log_core(exp_log_detail::bits_of(x), 0); }

}  // namespace revmerge::kernels
