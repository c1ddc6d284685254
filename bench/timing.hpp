#pragma once
// What the benchmarks time with: wall seconds since a point, and the host's memory bandwidth
// measured now (the floor for moving bytes once).
#include <chrono>
#include <cstring>
#include <vector>

namespace revmerge::bench {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// GB/s of memcpy over 256 MiB, read and write counted, after one warm-up copy.
inline double memcpy_gbps() {
  std::vector<char> a(256 << 20, 1), b(256 << 20);
  std::memcpy(b.data(), a.data(), a.size());
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 4; ++i) std::memcpy(b.data(), a.data(), a.size());
  return 4.0 * 2 * double(a.size()) / seconds_since(t0) / 1e9;
}

}  // namespace revmerge::bench
