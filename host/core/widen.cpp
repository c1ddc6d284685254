#include "core/widen.hpp"

#include <bit>
#include <cstdint>
#include <cstring>

namespace revmerge {
namespace {

constexpr std::uint32_t kExponent = 0x7f800000u;

// Runs of this many elements are widened, then looked through for the first non-finite value
// only when one of them is not finite (an OR of flags per run, so the loop vectorises).
constexpr std::size_t kRun = 2048;

// One run of BF16 (Bits = uint16_t) or F32 (uint32_t) values: bits << shift is the f32's bits.
// Compiled per instruction set; the arithmetic is integer shifts and one correctly rounded f32
// subtraction per element.
template <class Bits>
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
bool widen_run(const unsigned char* src, float* dst, std::size_t m, const float* minus) {
  constexpr int kShift = 32 - 8 * static_cast<int>(sizeof(Bits));
  std::uint32_t bad = 0;
  const auto widened = [&](std::size_t i) {
    Bits h;
    std::memcpy(&h, src + sizeof(Bits) * i, sizeof(Bits));
    const std::uint32_t u = static_cast<std::uint32_t>(h) << kShift;
    bad |= (u & kExponent) == kExponent;
    return std::bit_cast<float>(u);
  };
  if (minus)  // two loops, so that neither tests `minus` per element
    for (std::size_t i = 0; i < m; ++i) dst[i] = widened(i) - minus[i];
  else
    for (std::size_t i = 0; i < m; ++i) dst[i] = widened(i);
  return bad != 0;
}

// F16 and F64: the general conversion, then the check and the subtraction.
bool widen_other_run(DType type, const unsigned char* src, float* dst, std::size_t m, const float* minus) {
  convert_to_f32(type, src, dst, m);
  std::uint32_t bad = 0;
  for (std::size_t i = 0; i < m; ++i) bad |= (std::bit_cast<std::uint32_t>(dst[i]) & kExponent) == kExponent;
  if (minus)
    for (std::size_t i = 0; i < m; ++i) dst[i] -= minus[i];
  return bad != 0;
}

// The first non-finite value of a run that has one, from the file's bytes (dst may hold the
// values less minus by now).
std::size_t first_non_finite(DType type, const unsigned char* src, std::size_t m) {
  for (std::size_t i = 0; i < m; ++i) {
    float v;
    convert_to_f32(type, src + i * dtype_size(type), &v, 1);
    if ((std::bit_cast<std::uint32_t>(v) & kExponent) == kExponent) return i;
  }
  return m;
}

}  // namespace

std::size_t widen_finite(DType type, const void* src, float* dst, std::size_t count, const float* minus) {
  const auto* bytes = static_cast<const unsigned char*>(src);
  const std::size_t size = dtype_size(type);
  for (std::size_t at = 0; at < count; at += kRun) {
    const std::size_t m = count - at < kRun ? count - at : kRun;
    const unsigned char* s = bytes + at * size;
    const float* less = minus ? minus + at : nullptr;
    const bool bad = type == DType::BF16  ? widen_run<std::uint16_t>(s, dst + at, m, less)
                     : type == DType::F32 ? widen_run<std::uint32_t>(s, dst + at, m, less)
                                          : widen_other_run(type, s, dst + at, m, less);
    if (bad) return at + first_non_finite(type, s, m);
  }
  return count;
}

}  // namespace revmerge
