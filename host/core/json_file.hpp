#pragma once
// Small JSON files (configs, indexes, manifests): bounded in size, parsed with a message that
// names the file.
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "revmerge/error.hpp"

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

namespace detail {
template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};
template <class T>
struct is_string_map : std::false_type {};
template <class T>
struct is_string_map<std::map<std::string, T>> : std::true_type {};
}  // namespace detail

/// Converts a JSON value from an untrusted file to T, or throws format_error naming `what`.
/// Integers must be JSON integers within T's range (nlohmann's own conversion would cast a
/// float such as 1e69 to an integer, which is undefined behaviour); vectors and string maps
/// are converted element by element under the same rule.
template <class T>
T json_as(const nlohmann::json& v, const std::string& what) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    const bool fits =
        (v.is_number_unsigned() &&
         v.get<std::uint64_t>() <= static_cast<std::uint64_t>(std::numeric_limits<T>::max())) ||
        (v.is_number_integer() && !v.is_number_unsigned() &&
         v.get<std::int64_t>() >= static_cast<std::int64_t>(std::numeric_limits<T>::min()) &&
         v.get<std::int64_t>() <= static_cast<std::int64_t>(std::numeric_limits<T>::max()));
    if (!fits) throw format_error(what + " must be an integer in range, got " + v.dump().substr(0, 40));
    return v.is_number_unsigned() ? static_cast<T>(v.get<std::uint64_t>())
                                  : static_cast<T>(v.get<std::int64_t>());
  } else if constexpr (detail::is_vector<T>::value && !std::is_same_v<T, std::string>) {
    if (!v.is_array()) throw format_error(what + " must be a list");
    T out;
    for (const auto& e : v) out.push_back(json_as<typename T::value_type>(e, what + " entry"));
    return out;
  } else if constexpr (detail::is_string_map<T>::value) {
    if (!v.is_object()) throw format_error(what + " must be an object");
    T out;
    for (const auto& [k, e] : v.items())
      out.emplace(k, json_as<typename T::mapped_type>(e, what + "['" + k + "']"));
    return out;
  } else {
    try {
      return v.get<T>();
    } catch (const nlohmann::json::exception&) {
      throw format_error(what + " has the wrong type (" + std::string(v.type_name()) + ")");
    }
  }
}

}  // namespace revmerge
