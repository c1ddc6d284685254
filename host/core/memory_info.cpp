#include "core/memory_info.hpp"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "revmerge/error.hpp"

namespace revmerge {
namespace {

// A "Key:   123 kB" line of a /proc file, in bytes.
std::uint64_t proc_kb_field(const char* file, std::string_view key) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line))
    if (line.compare(0, key.size(), key) == 0 && line.size() > key.size() && line[key.size()] == ':') {
      std::istringstream rest(line.substr(key.size() + 1));
      std::uint64_t kb = 0;
      rest >> kb;
      return kb * 1024;
    }
  return 0;
}

}  // namespace

std::uint64_t parse_byte_size(std::string_view text, std::string_view option) {
  const auto bad = [&](const std::string& why) {
    return usage_error(std::string(option) + " '" + std::string(text) + "': " + why +
                       " (write e.g. 2GiB, 512MiB, 1.5GB or a byte count)");
  };
  std::size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == 0) throw bad("no number");
  double value = 0;
  try {
    std::size_t used = 0;
    value = std::stod(std::string(text.substr(0, i)), &used);
    if (used != i) throw bad("not a number");
  } catch (const std::logic_error&) {
    throw bad("not a number");
  }
  auto unit = std::string(text.substr(i));
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  double scale = 0;
  const double k = 1024, d = 1000;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "K" || unit == "KiB") scale = k;
  else if (unit == "M" || unit == "MiB") scale = k * k;
  else if (unit == "G" || unit == "GiB") scale = k * k * k;
  else if (unit == "T" || unit == "TiB") scale = k * k * k * k;
  else if (unit == "kB" || unit == "KB") scale = d;
  else if (unit == "MB") scale = d * d;
  else if (unit == "GB") scale = d * d * d;
  else if (unit == "TB") scale = d * d * d * d;
  else throw bad("unknown unit '" + unit + "'");
  const double bytes = value * scale;
  if (!(bytes >= 1) || bytes > 1.8e19) throw bad("out of range");
  return static_cast<std::uint64_t>(std::llround(bytes));
}

std::string format_bytes(std::uint64_t bytes, int decimals) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else std::snprintf(buf, sizeof buf, "%.*f %s", decimals >= 0 ? decimals : (v < 100 ? 2 : 1), v, units[u]);
  return buf;
}

std::uint64_t host_memory_available() { return proc_kb_field("/proc/meminfo", "MemAvailable"); }

std::uint64_t peak_rss_bytes() { return proc_kb_field("/proc/self/status", "VmHWM"); }

}  // namespace revmerge
