#pragma once
// Small helpers for the CLI's human-readable output.
#include <cstdint>
#include <span>
#include <string>

namespace revmerge::cli {

/// "12.3 MiB"-style size.
std::string human_bytes(std::uint64_t bytes);
/// "[4096, 11008]"-style shape.
std::string shape_string(std::span<const std::int64_t> shape);

}  // namespace revmerge::cli
