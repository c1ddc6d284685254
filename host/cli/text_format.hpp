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
/// "revmerge: warning: <text>" on stderr (shown with --quiet and --json too).
void print_warning(const std::string& text);

}  // namespace revmerge::cli

#include <vector>

namespace revmerge::cli {

/// "1,0.5,-2" → {1, 0.5, -2}; a usage_error naming `option` for an empty or malformed item.
/// (Comma lists are one argument, so positional inputs after them are not swallowed.)
std::vector<double> parse_number_list(const std::string& text, const std::string& option);
std::vector<std::int64_t> parse_integer_list(const std::string& text, const std::string& option);
std::vector<std::string> split_list(const std::string& text);

}  // namespace revmerge::cli
