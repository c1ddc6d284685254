#pragma once
// Bit-exact conversions between f32 and the 16-bit float formats, for the host and the device
// alike: the files' BF16 / F16 bytes are widened where they are used (no f32 copy of an input),
// and results are rounded to the stored type where they are made. Round to nearest, ties to
// even, as PyTorch does; NaN stays a quiet NaN, overflow becomes ±Inf. dtype.cpp's conversions
// are these functions, so a file written by the host and a result rounded on a GPU hold the
// same bits.
#include <cstdint>
#include <cstring>

#include "kernels/host_device.hpp"

namespace revmerge::kernels {

/// The element types the per-position routines read and write (the floating safetensors dtypes).
enum class ElemType : std::int32_t { f32 = 0, f16 = 1, bf16 = 2, f64 = 3 };

REVMERGE_HD inline std::uint32_t float_bits(float f) {
  std::uint32_t x;
  memcpy(&x, &f, 4);
  return x;
}

REVMERGE_HD inline float bits_float(std::uint32_t x) {
  float f;
  memcpy(&f, &x, 4);
  return f;
}

REVMERGE_HD inline float bf16_bits_to_f32(std::uint16_t bits) {
  return bits_float(static_cast<std::uint32_t>(bits) << 16);
}

REVMERGE_HD inline std::uint16_t f32_to_bf16_bits(float value) {
  const std::uint32_t x = float_bits(value);
  const std::uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const std::uint32_t quiet = (x >> 16) | 0x0040u;  // NaN: keep it a (quiet) NaN
  return static_cast<std::uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

REVMERGE_HD inline float f16_bits_to_f32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant · 2^-24, exact in f32
    const float mag = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -mag : mag;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

REVMERGE_HD inline std::uint16_t f32_to_f16_bits(float value) {
  const std::uint32_t x = float_bits(value);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u)  // Inf stays Inf, NaN stays a quiet NaN
    return static_cast<std::uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  if (absx >= 0x477ff000u)  // >= 65520 rounds past the largest half (65504)
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  if (absx < 0x38800000u) {  // below 2^-14: a half subnormal in units of 2^-24
    // Exact scaling by a power of two, then an integer rounding done by hand (half to even), so
    // no rounding mode or library call is involved.
    const std::uint32_t mant = (absx & 0x7fffffu) | 0x800000u;  // implicit bit
    const int exp = static_cast<int>(absx >> 23);                // biased, < 113
    if (exp < 102) return sign;  // below 2^-25: rounds to zero (ties to even)
    const int shift = 126 - exp;  // value · 2^24 = mant >> shift (shift in 14 .. 24)
    std::uint32_t q = mant >> shift;
    const std::uint32_t rest = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (q & 1u))) ++q;
    return static_cast<std::uint16_t>(sign | q);
  }
  std::uint32_t h = (absx >> 13) - (112u << 10);  // rebias the exponent 127 -> 15
  const std::uint32_t rest = absx & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

/// A T at p, which need not be aligned to T (a mapped file's tensors need not be). On the
/// device a memcpy from bytes compiles to a load per byte; where p is aligned — every device
/// buffer is an allocation of its own — one load of a T reads the same bits.
template <class T>
REVMERGE_HD_INLINE T load_unaligned(const unsigned char* p) {
#ifdef __CUDA_ARCH__
  if ((reinterpret_cast<std::uintptr_t>(p) & (alignof(T) - 1)) == 0) return *reinterpret_cast<const T*>(p);
#endif
  T v;
  memcpy(&v, p, sizeof(T));
  return v;
}

/// Element i of an array of type `t`, widened to f32 (f64 rounded to nearest).
REVMERGE_HD_INLINE float load_as_f32(const void* base, std::int64_t i, ElemType t) {
  const auto* p = static_cast<const unsigned char*>(base);
  switch (t) {
    case ElemType::f32: return load_unaligned<float>(p + i * 4);
    case ElemType::f16: return f16_bits_to_f32(load_unaligned<std::uint16_t>(p + i * 2));
    case ElemType::bf16: return bf16_bits_to_f32(load_unaligned<std::uint16_t>(p + i * 2));
    default: return static_cast<float>(load_unaligned<double>(p + i * 8));
  }
}

/// Stores `v` as element i of an array of type `t` (f32, f16 or bf16), rounding it, and
/// returns the value stored, widened again: what a reader of the array will see.
REVMERGE_HD_INLINE float store_rounded(void* base, std::int64_t i, ElemType t, float v) {
  auto* p = static_cast<unsigned char*>(base);
  if (t == ElemType::f16) {
    const std::uint16_t h = f32_to_f16_bits(v);
    memcpy(p + i * 2, &h, 2);
    return f16_bits_to_f32(h);
  }
  if (t == ElemType::bf16) {
    const std::uint16_t h = f32_to_bf16_bits(v);
    memcpy(p + i * 2, &h, 2);
    return bf16_bits_to_f32(h);
  }
  memcpy(p + i * 4, &v, 4);
  return v;
}

/// store_rounded for elements [0, count) of an array at `base` + `offset` elements, each value
/// from and back into value(i) (a float&): the type's loop chosen once, so a compiler can run
/// it on vectors.
template <class F>
REVMERGE_HD_INLINE void store_rounded_all(void* base, std::int64_t offset, ElemType t,
                                          std::int64_t count, F&& value) {
  auto* p = static_cast<unsigned char*>(base);
  if (t == ElemType::bf16) {
    auto* out = reinterpret_cast<std::uint16_t*>(p) + offset;
    for (std::int64_t i = 0; i < count; ++i) {
      float& v = value(i);
      out[i] = f32_to_bf16_bits(v);
      v = bf16_bits_to_f32(out[i]);
    }
  } else if (t == ElemType::f16) {
    for (std::int64_t i = 0; i < count; ++i) {
      float& v = value(i);
      v = store_rounded(base, offset + i, t, v);
    }
  } else {
    for (std::int64_t i = 0; i < count; ++i) memcpy(p + (offset + i) * 4, &value(i), 4);
  }
}

/// Rounds each of `count` floats to the nearest value of type `t` (what storing and reading it
/// back gives), one loop per type.
REVMERGE_HD_INLINE void round_in_place(float* v, std::int64_t count, ElemType t) {
  if (t == ElemType::bf16)
    for (std::int64_t i = 0; i < count; ++i) v[i] = bf16_bits_to_f32(f32_to_bf16_bits(v[i]));
  else if (t == ElemType::f16)
    for (std::int64_t i = 0; i < count; ++i) v[i] = f16_bits_to_f32(f32_to_f16_bits(v[i]));
}

/// Stores a value already rounded to type `t` (round_in_place) as element i: exact.
REVMERGE_HD_INLINE void store_exact(void* base, std::int64_t i, ElemType t, float v) {
  auto* p = static_cast<unsigned char*>(base);
  if (t == ElemType::f32) {
    memcpy(p + i * 4, &v, 4);
  } else {
    const std::uint32_t x = float_bits(v);  // bf16: the top half; f16: re-encoded exactly
    const std::uint16_t h = t == ElemType::bf16 ? static_cast<std::uint16_t>(x >> 16) : f32_to_f16_bits(v);
    memcpy(p + i * 2, &h, 2);
  }
}

/// Bytes of one element of `t`.
REVMERGE_HD inline int elem_size(ElemType t) {
  return t == ElemType::f32 ? 4 : t == ElemType::f64 ? 8 : 2;
}

}  // namespace revmerge::kernels
