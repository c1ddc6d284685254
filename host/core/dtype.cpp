#include "revmerge/dtype.hpp"

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "kernels/float_bits.hpp"
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

// Conversions of large tensors split into chunks of this many elements, one thread each.
constexpr std::size_t kConvertChunk = std::size_t{1} << 20;

// The 16-bit conversions every merge's reads and writes go through, compiled again for AVX2 and
// AVX-512 where the CPU has them (integer arithmetic: the same bits everywhere). Built for the
// baseline x86-64 alone, the two were 16 % of a task arithmetic merge's samples (2-layer 7b set).
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void bf16_to_f32_run(const void* src, float* dst, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i)
    dst[i] = std::bit_cast<float>(std::uint32_t{load<std::uint16_t>(src, i)} << 16);
}

#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void f32_to_bf16_run(const float* src, unsigned char* out, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint16_t v = kernels::f32_to_bf16_bits(src[i]);
    std::memcpy(out + i * 2, &v, 2);
  }
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
      if constexpr (std::is_same_v<Out, float>) return bf16_to_f32_run(src, dst, count);
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

DType parse_float_dtype_option(std::string_view value, std::string_view option,
                               std::initializer_list<DType> allowed) {
  // Every spelling users bring from PyTorch, mergekit, transformers and safetensors headers.
  static constexpr std::pair<std::string_view, DType> kNames[] = {
      {"f32", DType::F32},      {"fp32", DType::F32},      {"float32", DType::F32},
      {"float", DType::F32},    {"f16", DType::F16},       {"fp16", DType::F16},
      {"float16", DType::F16},  {"half", DType::F16},      {"bf16", DType::BF16},
      {"bfloat16", DType::BF16}, {"f64", DType::F64},      {"fp64", DType::F64},
      {"float64", DType::F64},  {"double", DType::F64}};
  std::string lower(value);
  for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (lower.starts_with("torch.")) lower.erase(0, 6);  // "torch.bfloat16", as configs write it
  std::string expected;
  for (const DType t : allowed) {
    if (!expected.empty()) expected += t == *(allowed.end() - 1) ? " or " : ", ";
    expected += t == DType::F32 ? "f32" : t == DType::F16 ? "f16" : t == DType::BF16 ? "bf16" : "f64";
  }
  for (const auto& [name, type] : kNames)
    if (lower == name) {
      if (std::find(allowed.begin(), allowed.end(), type) == allowed.end())
        throw usage_error(std::string(option) + ": " + std::string(value) +
                          " is not written here (expected " + expected + ")");
      return type;
    }
  throw usage_error(std::string(option) + ": unknown dtype '" + std::string(value) +
                    "' (expected " + expected + "; fp32, float32, half, bfloat16 … are understood too)");
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
    case DType::F16:  // the kernels' inline rounding, one loop per type so that it vectorises
      for (std::size_t i = 0; i < count; ++i) {
        const std::uint16_t v = kernels::f32_to_f16_bits(src[i]);
        std::memcpy(out + i * 2, &v, 2);
      }
      return;
    case DType::BF16:
      return f32_to_bf16_run(src, out, count);
    default:
      throw unsupported_error("cannot write dtype " + std::string(dtype_name(dst_type)) +
                              "; revmerge writes F64, F32, F16 and BF16");
  }
}

// The scalar conversions are the kernels' (kernels/float_bits.hpp), so what the host writes and
// what a device rounds are the same bits.
float bf16_to_f32(std::uint16_t bits) noexcept { return kernels::bf16_bits_to_f32(bits); }
void convert_to_f32(DType src_type, const void* src, float* dst, std::size_t count, int threads) {
  const std::size_t size = dtype_size(src_type);
  const auto chunks = static_cast<std::int64_t>((count + kConvertChunk - 1) / kConvertChunk);
  if (threads <= 1 || chunks <= 1 || !is_float_dtype(src_type))  // unknown types throw here
    return convert_to_f32(src_type, src, dst, count);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::size_t at = static_cast<std::size_t>(c) * kConvertChunk;
    convert_to(src_type, static_cast<const unsigned char*>(src) + at * size, dst + at,
               std::min(kConvertChunk, count - at));
  }
}

void convert_from_f32(const float* src, DType dst_type, void* dst, std::size_t count, int threads) {
  const std::size_t size = dtype_size(dst_type);
  const auto chunks = static_cast<std::int64_t>((count + kConvertChunk - 1) / kConvertChunk);
  if (threads <= 1 || chunks <= 1) return convert_from_f32(src, dst_type, dst, count);
  // Unknown types throw before the parallel loop (an exception must not leave it).
  if (!is_float_dtype(dst_type)) return convert_from_f32(src, dst_type, dst, count);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::size_t at = static_cast<std::size_t>(c) * kConvertChunk;
    convert_from_f32(src + at, dst_type, static_cast<unsigned char*>(dst) + at * size,
                     std::min(kConvertChunk, count - at));
  }
}

std::uint16_t f32_to_bf16(float value) noexcept { return kernels::f32_to_bf16_bits(value); }
float f16_to_f32(std::uint16_t h) noexcept { return kernels::f16_bits_to_f32(h); }
std::uint16_t f32_to_f16(float value) noexcept { return kernels::f32_to_f16_bits(value); }

}  // namespace revmerge
