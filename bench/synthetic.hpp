#pragma once
// Synthetic task factors with the structure real task adapters show: a part every task shares,
// two task groups, each task's own part and a little noise — so RMM's spectra decay as they do
// on real adapters instead of looking like white noise.
#include <cstdint>
#include <random>
#include <vector>

namespace revmerge::bench {

/// out (n × size) = shared + 0.6 · group(t mod 2) + 0.3 · own_t + 0.02 · noise, all N(0, 1).
inline void structured_factors(std::vector<float>& out, std::int64_t n, std::int64_t size,
                               std::mt19937& rng) {
  std::normal_distribution<float> g;
  std::vector<float> shared(size), g0(size), g1(size);
  for (std::int64_t i = 0; i < size; ++i) shared[i] = g(rng), g0[i] = g(rng), g1[i] = g(rng);
  out.resize(static_cast<std::size_t>(n * size));
  for (std::int64_t t = 0; t < n; ++t) {
    const auto& grp = t % 2 ? g1 : g0;
    for (std::int64_t i = 0; i < size; ++i)
      out[t * size + i] = shared[i] + 0.6f * grp[i] + 0.3f * g(rng) + 0.02f * g(rng);
  }
}

}  // namespace revmerge::bench
