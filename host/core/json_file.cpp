#include "core/json_file.hpp"

#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "revmerge/error.hpp"

namespace revmerge {

nlohmann::json parse_json_text(std::string_view text, std::string_view source, int max_depth) {
  using nlohmann::json;
  std::vector<std::set<std::string>> keys;
  auto guard = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth > max_depth)
      throw format_error(std::string(source) + ": JSON nests deeper than " +
                         std::to_string(max_depth) + " levels");
    if (event == json::parse_event_t::object_start) keys.emplace_back();
    if (event == json::parse_event_t::object_end && !keys.empty()) keys.pop_back();
    if (event == json::parse_event_t::key && !keys.empty() &&
        !keys.back().insert(parsed.get<std::string>()).second)
      throw format_error(std::string(source) + ": duplicate key '" + parsed.get<std::string>() +
                         "'");
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), guard);
  } catch (const json::exception& e) {
    throw format_error(std::string(source) + ": invalid JSON: " + e.what());
  }
}

std::string read_text_file(const std::filesystem::path& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw io_error(path.string() + ": cannot read: " + ec.message());
  if (size > kMaxJsonFileBytes)
    throw format_error(path.string() + ": " + std::to_string(size) +
                       " bytes is too large for a JSON side file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io_error(path.string() + ": cannot open");
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

nlohmann::json read_json_file(const std::filesystem::path& path) {
  return parse_json_text(read_text_file(path), path.string());
}

}  // namespace revmerge
