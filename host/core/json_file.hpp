#pragma once
// Small JSON files (configs, indexes, manifests): bounded in size, parsed with a message that
// names the file.
#include <filesystem>
#include <nlohmann/json.hpp>

namespace revmerge {

/// Largest JSON side file revmerge reads.
inline constexpr std::uintmax_t kMaxJsonFileBytes = 64u << 20;

/// Reads a side file whole (at most kMaxJsonFileBytes); throws io_error / format_error.
std::string read_text_file(const std::filesystem::path& path);

/// Reads and parses `path`; throws io_error / format_error naming the file.
nlohmann::json read_json_file(const std::filesystem::path& path);

/// Parses `text` from `source` (a name for messages): invalid UTF-8, duplicate keys (which
/// nlohmann would silently merge) and nesting deeper than `max_depth` are format_errors.
/// `max_keys` bounds the number of keys of the top-level object (checked while parsing, before
/// the object is built).
nlohmann::json parse_json_text(std::string_view text, std::string_view source, int max_depth = 64,
                               std::size_t max_keys = SIZE_MAX);

}  // namespace revmerge
