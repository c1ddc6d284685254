#include "text_format.hpp"

#include <fmt/format.h>

#include "core/memory_info.hpp"
#include "revmerge/error.hpp"

namespace revmerge::cli {

std::string human_bytes(std::uint64_t bytes) { return format_bytes(bytes, 1); }

std::string shape_string(std::span<const std::int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

void print_warning(const std::string& text) { fmt::print(stderr, "revmerge: warning: {}\n", text); }

}  // namespace revmerge::cli

namespace revmerge::cli {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::size_t start = 0;
  while (true) {
    const auto comma = text.find(',', start);
    items.push_back(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return items;
}

namespace {

// Each comma-separated item of `text` through `convert` (std::stod / std::stoll), which must use
// the whole item; anything else is a usage_error naming the option and the item.
template <class T, class Convert>
std::vector<T> parse_list(const std::string& text, const std::string& option, Convert convert,
                          const char* what) {
  std::vector<T> out;
  for (const auto& item : split_list(text)) {
    std::size_t used = 0;
    T v{};
    try {
      v = static_cast<T>(convert(item, &used));
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size())
      throw usage_error(option + ": '" + item + "' in '" + text + "' is not " + what);
    out.push_back(v);
  }
  return out;
}

}  // namespace

std::vector<double> parse_number_list(const std::string& text, const std::string& option) {
  return parse_list<double>(
      text, option, [](const std::string& x, std::size_t* u) { return std::stod(x, u); }, "a number");
}

std::vector<std::int64_t> parse_integer_list(const std::string& text, const std::string& option) {
  return parse_list<std::int64_t>(
      text, option, [](const std::string& x, std::size_t* u) { return std::stoll(x, u); }, "an integer");
}

}  // namespace revmerge::cli
