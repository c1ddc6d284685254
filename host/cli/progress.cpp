#include "progress.hpp"

#include "text_format.hpp"

#include <unistd.h>

#include <cstdio>
#include <string>

namespace revmerge::cli {
namespace {

std::string clock_text(double seconds) {
  const auto s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  return buf;
}

// Rate and remaining time from the bytes read so far (reading paces the whole pipeline).
struct Rate {
  double gbps = 0, eta = 0;
  explicit Rate(const PipelineProgress& p) {
    if (p.seconds <= 0 || p.bytes_read == 0) return;
    gbps = static_cast<double>(p.bytes_read) / p.seconds / 1e9;
    const double left = static_cast<double>(p.bytes_total - std::min(p.bytes_read, p.bytes_total));
    eta = left / (static_cast<double>(p.bytes_read) / p.seconds);
  }
};

}  // namespace

PipelineProgressFn pipeline_progress(bool quiet, const char* what) {
  if (quiet) return {};
  if (::isatty(STDERR_FILENO)) {
    return [what](const PipelineProgress& p) {
      const Rate r(p);
      constexpr int width = 30;
      const int filled = p.layers ? static_cast<int>(width * p.layers_done / p.layers) : width;
      std::string bar(static_cast<std::size_t>(filled), '#');
      bar.resize(width, '.');
      const auto rate = human_bytes(static_cast<std::uint64_t>(r.gbps * 1e9)) + "/s";
      std::fprintf(stderr, "\r\033[K%s [%s] %zu/%zu layers  %s  ETA %s", what, bar.c_str(),
                   p.layers_done, p.layers, rate.c_str(), clock_text(r.eta).c_str());
      if (p.finished)
        std::fprintf(stderr, "\r\033[K%s: %zu layers in %s (%s)\n", what, p.layers,
                     clock_text(p.seconds).c_str(), rate.c_str());
      std::fflush(stderr);
    };
  }
  return [what, next = std::size_t{0}](const PipelineProgress& p) mutable {
    // A line whenever another tenth of the layers is done, and at the end.
    const std::size_t tenth = p.layers_done * 10 / (p.layers ? p.layers : 1);
    if (tenth < next && !p.finished) return;
    next = tenth + 1;
    const Rate r(p);
    std::fprintf(stderr, "%s: %zu/%zu layers, %s of %s read, %s/s, %s, %s\n", what,
                 p.layers_done, p.layers, human_bytes(p.bytes_read).c_str(),
                 human_bytes(p.bytes_total).c_str(),
                 human_bytes(static_cast<std::uint64_t>(r.gbps * 1e9)).c_str(),
                 p.finished ? "done" : ("ETA " + clock_text(r.eta)).c_str(),
                 ("elapsed " + clock_text(p.seconds)).c_str());
    std::fflush(stderr);
  };
}

ProgressFn module_progress(bool quiet, const char* what) {
  if (quiet || !::isatty(STDERR_FILENO)) return {};
  return [what](std::size_t done, std::size_t all, const std::string& path) {
    std::fprintf(stderr, "\r\033[K%s %zu/%zu %s", what, done, all, path.c_str());
    if (done == all) std::fprintf(stderr, "\r\033[K");
  };
}

}  // namespace revmerge::cli
