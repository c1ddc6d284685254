#pragma once
// Overflow-checked size arithmetic for sizes that come from untrusted files.
#include <cstdint>
#include <optional>
#include <span>

namespace revmerge::detail {

inline std::optional<std::uint64_t> checked_mul(std::uint64_t a, std::uint64_t b) {
  std::uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

inline std::optional<std::uint64_t> checked_add(std::uint64_t a, std::uint64_t b) {
  std::uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

/// Product of non-negative dimensions, nullopt on a negative dimension or overflow.
inline std::optional<std::uint64_t> checked_numel(std::span<const std::int64_t> shape) {
  std::uint64_t n = 1;
  for (const auto d : shape) {
    if (d < 0) return std::nullopt;
    auto next = checked_mul(n, static_cast<std::uint64_t>(d));
    if (!next) return std::nullopt;
    n = *next;
  }
  return n;
}

}  // namespace revmerge::detail
