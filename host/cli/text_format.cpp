#include "text_format.hpp"

#include <fmt/format.h>

#include "revmerge/error.hpp"

namespace revmerge::cli {

std::string human_bytes(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, kUnits[u]);
}

std::string shape_string(std::span<const std::int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

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

std::vector<double> parse_number_list(const std::string& text, const std::string& option) {
  std::vector<double> out;
  for (const auto& item : split_list(text)) {
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size())
      throw usage_error(option + ": '" + item + "' in '" + text + "' is not a number");
    out.push_back(v);
  }
  return out;
}

std::vector<std::int64_t> parse_integer_list(const std::string& text, const std::string& option) {
  std::vector<std::int64_t> out;
  for (const auto& item : split_list(text)) {
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size())
      throw usage_error(option + ": '" + item + "' in '" + text + "' is not an integer");
    out.push_back(v);
  }
  return out;
}

}  // namespace revmerge::cli
