#pragma once
/// \file
/// Element types as they appear in safetensors files, and conversions between the floating
/// ones. Conversion to a narrower type rounds to nearest, ties to even, like PyTorch.
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string_view>

namespace revmerge {

/// Every dtype the safetensors format names. Only the floating types F64, F32, F16 and BF16
/// can be converted; the others can be listed (`revmerge info`) but not computed on.
enum class DType : std::uint8_t {
  F64, F32, F16, BF16,
  F8_E4M3, F8_E5M2,
  I64, I32, I16, I8, U64, U32, U16, U8, BOOL,
};

/// Name as written in a safetensors header ("F32", "BF16", ...).
std::string_view dtype_name(DType t) noexcept;

/// Size of one element in bytes.
std::size_t dtype_size(DType t) noexcept;

/// Parses a safetensors dtype name; std::nullopt when the name is not one of the format's.
std::optional<DType> parse_dtype(std::string_view name) noexcept;

/// Parses a user-facing dtype option — f32 / fp32 / float32 / float, f16 / fp16 / float16 /
/// half, bf16 / bfloat16, f64 / fp64 / float64 / double, any case, "torch." allowed in front —
/// as one of `allowed`; throws usage_error naming `option` and listing only what it accepts.
DType parse_float_dtype_option(std::string_view value, std::string_view option,
                               std::initializer_list<DType> allowed = {DType::F32, DType::F16,
                                                                       DType::BF16});

/// True for F64, F32, F16 and BF16: the types the conversions below accept.
bool is_float_dtype(DType t) noexcept;

/// Converts `count` elements of type `src_type` at `src` (little-endian, unaligned allowed)
/// into `dst`. Throws unsupported_error for a non-float `src_type`.
void convert_to_f32(DType src_type, const void* src, float* dst, std::size_t count);
void convert_to_f64(DType src_type, const void* src, double* dst, std::size_t count);

/// Converts `count` floats into `dst_type` at `dst` (rounding to nearest even for F16/BF16).
void convert_from_f32(const float* src, DType dst_type, void* dst, std::size_t count);

/// The same on `threads` OpenMP threads, in chunks of 2²⁰ elements (for whole tensors read or
/// written outside other parallel work; the results are the same bytes).
void convert_to_f32(DType src_type, const void* src, float* dst, std::size_t count, int threads);
void convert_from_f32(const float* src, DType dst_type, void* dst, std::size_t count, int threads);

/// Scalar conversions, exposed for tests and kernels.
float bf16_to_f32(std::uint16_t bits) noexcept;
std::uint16_t f32_to_bf16(float value) noexcept;
float f16_to_f32(std::uint16_t bits) noexcept;
std::uint16_t f32_to_f16(float value) noexcept;

}  // namespace revmerge
