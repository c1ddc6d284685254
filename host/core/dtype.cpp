#include "revmerge/dtype.hpp"

#include <bit>
#include <cmath>
#include <cstring>
#include <string>

#include "revmerge/error.hpp"

namespace revmerge {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; revmerge converts in place only on such hosts");

namespace {

struct DTypeRow {
  DType type;
  std::string_view name;
  std::size_t size;
};

constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8},         {DType::F32, "F32", 4},   {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},       {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::F8_E5M2, "F8_E5M2", 1}, {DType::I64, "I64", 8},   {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},         {DType::I8, "I8", 1},     {DType::U64, "U64", 8},
    {DType::U32, "U32", 4},         {DType::U16, "U16", 2},   {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
};

template <class T>
T load(const void* base, std::size_t i) noexcept {
  T v;
  std::memcpy(&v, static_cast<const unsigned char*>(base) + i * sizeof(T), sizeof(T));
  return v;
}

template <class Out>
void convert_to(DType src_type, const void* src, Out* dst, std::size_t count) {
  switch (src_type) {
    case DType::F64:
      for (std::size_t i = 0; i < count; ++i) dst[i] = static_cast<Out>(load<double>(src, i));
      return;
    case DType::F32:
      for (std::size_t i = 0; i < count; ++i) dst[i] = static_cast<Out>(load<float>(src, i));
      return;
    case DType::F16:
      for (std::size_t i = 0; i < count; ++i) dst[i] = f16_to_f32(load<std::uint16_t>(src, i));
      return;
    case DType::BF16:  // a BF16 is the top half of an F32: a shift the compiler vectorises
      for (std::size_t i = 0; i < count; ++i)
        dst[i] = static_cast<Out>(
            std::bit_cast<float>(std::uint32_t{load<std::uint16_t>(src, i)} << 16));
      return;
    default:
      throw unsupported_error("cannot convert dtype " + std::string(dtype_name(src_type)) +
                              " to floating point; revmerge computes on F64, F32, F16 and BF16");
  }
}

}  // namespace

std::string_view dtype_name(DType t) noexcept {
  for (const auto& row : kDTypes)
    if (row.type == t) return row.name;
  return "?";
}

std::size_t dtype_size(DType t) noexcept {
  for (const auto& row : kDTypes)
    if (row.type == t) return row.size;
  return 0;
}

std::optional<DType> parse_dtype(std::string_view name) noexcept {
  for (const auto& row : kDTypes)
    if (row.name == name) return row.type;
  return std::nullopt;
}

DType parse_float_dtype_option(std::string_view value, std::string_view option) {
  if (value == "f32" || value == "float32" || value == "F32") return DType::F32;
  if (value == "f16" || value == "float16" || value == "F16") return DType::F16;
  if (value == "bf16" || value == "bfloat16" || value == "BF16") return DType::BF16;
  if (value == "f64" || value == "float64" || value == "F64") return DType::F64;
  throw usage_error(std::string(option) + ": unknown dtype '" + std::string(value) +
                    "' (expected f32, f16, bf16 or f64)");
}

bool is_float_dtype(DType t) noexcept {
  return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

void convert_to_f32(DType src_type, const void* src, float* dst, std::size_t count) {
  convert_to(src_type, src, dst, count);
}

void convert_to_f64(DType src_type, const void* src, double* dst, std::size_t count) {
  convert_to(src_type, src, dst, count);
}

void convert_from_f32(const float* src, DType dst_type, void* dst, std::size_t count) {
  auto* out = static_cast<unsigned char*>(dst);
  switch (dst_type) {
    case DType::F32:
      std::memcpy(out, src, count * sizeof(float));
      return;
    case DType::F64:
      for (std::size_t i = 0; i < count; ++i) {
        const double v = src[i];
        std::memcpy(out + i * 8, &v, 8);
      }
      return;
    case DType::F16:
    case DType::BF16:
      for (std::size_t i = 0; i < count; ++i) {
        const std::uint16_t v = dst_type == DType::F16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i]);
        std::memcpy(out + i * 2, &v, 2);
      }
      return;
    default:
      throw unsupported_error("cannot write dtype " + std::string(dtype_name(dst_type)) +
                              "; revmerge writes F64, F32, F16 and BF16");
  }
}

float bf16_to_f32(std::uint16_t bits) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

std::uint16_t f32_to_bf16(float value) noexcept {
  const auto x = std::bit_cast<std::uint32_t>(value);
  if ((x & 0x7fffffffu) > 0x7f800000u)  // NaN: keep it a (quiet) NaN
    return static_cast<std::uint16_t>((x >> 16) | 0x0040u);
  const std::uint32_t bias = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + bias) >> 16);
}

float f16_to_f32(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float mag = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -mag : mag;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

std::uint16_t f32_to_f16(float value) noexcept {
  const auto x = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u)  // Inf stays Inf, NaN stays a quiet NaN
    return static_cast<std::uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  if (absx >= 0x477ff000u)  // >= 65520 rounds past the largest half (65504)
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  if (absx < 0x38800000u) {  // below 2^-14: a half subnormal in units of 2^-24
    // Exact scaling by a power of two, then round-half-even (the default rounding mode).
    const float scaled = std::bit_cast<float>(absx) * 16777216.0f;
    return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(std::nearbyint(scaled)));
  }
  std::uint32_t h = (absx >> 13) - (112u << 10);  // rebias the exponent 127 -> 15
  const std::uint32_t rest = absx & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

}  // namespace revmerge
