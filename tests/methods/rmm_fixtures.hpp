#pragma once
// Synthetic adapter stacks for the RMM tests: structured like real task adapters (a shared
// part, group directions, each task's own part) with fixed seeds.
#include <cstdint>
#include <random>
#include <vector>

namespace revmerge::test {

struct AdapterStack {
  std::int64_t n, r, in, out;
  std::vector<float> a;  // n × r × in
  std::vector<float> b;  // n × out × r (scale folded in)
};

inline AdapterStack make_stack(std::int64_t n, std::int64_t r, std::int64_t in, std::int64_t out,
                               unsigned seed, double own = 0.4, double noise = 0.05) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  AdapterStack s{n, r, in, out, {}, {}};
  auto fill = [&](std::vector<float>& dst, std::int64_t size) {
    std::vector<float> shared(size), group0(size), group1(size);
    for (auto* v : {&shared, &group0, &group1})
      for (auto& x : *v) x = g(rng);
    for (std::int64_t t = 0; t < n; ++t) {
      const auto& grp = t % 2 ? group1 : group0;
      for (std::int64_t i = 0; i < size; ++i)
        dst.push_back(static_cast<float>(shared[i] + 0.6 * grp[i] + own * g(rng) + noise * g(rng)));
    }
  };
  fill(s.a, r * in);
  fill(s.b, out * r);
  return s;
}

}  // namespace revmerge::test
