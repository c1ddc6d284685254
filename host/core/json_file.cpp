#include "core/json_file.hpp"

#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "revmerge/error.hpp"

namespace revmerge {

namespace {

// A first, DOM-free pass that enforces the limits (nesting, duplicate keys, top-level entries)
// before anything is built. (nlohmann's callback parser would do it in one pass but rescans the
// parent object after every child, which is quadratic in the number of entries.)
struct LimitChecker {
  using json = nlohmann::json;
  std::string_view source;
  int max_depth;
  std::size_t max_keys;
  std::vector<std::set<std::string>> keys;  // one set per open object (empty for arrays)
  std::vector<bool> is_object;
  std::size_t top_keys = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw format_error(std::string(source) + ": " + what);
  }
  bool open(bool object) {
    if (static_cast<int>(is_object.size()) >= max_depth)
      fail("JSON nests deeper than " + std::to_string(max_depth) + " levels");
    is_object.push_back(object);
    keys.emplace_back();
    return true;
  }
  bool close() {
    is_object.pop_back();
    keys.pop_back();
    return true;
  }
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const std::string&) { return true; }
  bool string(std::string&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool start_object(std::size_t) { return open(true); }
  bool start_array(std::size_t) { return open(false); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool key(std::string& k) {
    if (is_object.size() == 1 && ++top_keys > max_keys)
      fail("more than " + std::to_string(max_keys) + " entries");
    if (!keys.back().insert(k).second) fail("duplicate key '" + k + "'");
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    fail(std::string("invalid JSON: ") + e.what());
  }
};

}  // namespace

nlohmann::json parse_json_text(std::string_view text, std::string_view source, int max_depth,
                               std::size_t max_keys) {
  LimitChecker check{source, max_depth, max_keys, {}, {}, 0};
  nlohmann::json::sax_parse(text.begin(), text.end(), &check);
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
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
