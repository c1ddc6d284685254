#pragma once
// A plain double-precision statement of the classic methods, written from PEFT's merge_utils and
// mergekit's generalized_task_arithmetic without sharing code with host/methods: full sorts
// instead of selection, one loop per step.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/counter_rng.hpp"

namespace revmerge::reference {

struct Recipe {
  bool trim = false, keep_one = false, drop = false;
  int rescale = 0;  // 0 none, 1 1/density, 2 l1
  bool elect = false, elect_count = false, elect_weighted = false;
  int normalize = 0;  // 0 none, 1 agreeing count, 2 agreeing weight, 3 weight sum
  double lambda = 1;
};

inline std::vector<double> trim(const std::vector<double>& x, double density, bool keep_one) {
  if (density >= 1) return x;
  std::vector<double> out(x.size(), 0.0);
  if (density <= 0) return out;
  auto k = static_cast<std::size_t>(density * static_cast<double>(x.size()));
  if (keep_one) k = std::max<std::size_t>(k, 1);
  std::vector<std::size_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](auto a, auto b) { return std::fabs(x[a]) > std::fabs(x[b]); });
  for (std::size_t i = 0; i < std::min(k, x.size()); ++i) out[order[i]] = x[order[i]];
  return out;
}

inline std::vector<double> drop(const std::vector<double>& x, double density, int rescale,
                                std::uint64_t seed, const std::string& stream) {
  if (density >= 1) return x;
  std::vector<double> out(x.size(), 0.0);
  if (density <= 0) return out;
  const auto id = kernels::stream_id(stream);
  double l1 = 0, kept = 0;
  for (std::size_t j = 0; j < x.size(); ++j) {
    l1 += std::fabs(x[j]);
    if (kernels::counter_uniform(seed, id, j) < density) out[j] = x[j], kept += std::fabs(x[j]);
  }
  const double f = rescale == 1 ? 1 / density : (rescale == 2 && l1 >= 1e-7 && kept >= 1e-7) ? l1 / kept : 1;
  for (auto& v : out) v *= f;
  return out;
}

/// Merges tasks[t] (all the same size) with weights and densities; `name` keys DARE's streams.
inline std::vector<double> combine(const Recipe& r, std::vector<std::vector<double>> tasks,
                                   const std::vector<double>& w, const std::vector<double>& d,
                                   const std::string& name, std::uint64_t seed) {
  const std::size_t n = tasks.size(), m = tasks[0].size();
  for (std::size_t t = 0; t < n; ++t) {
    if (r.trim) tasks[t] = trim(tasks[t], d[t], r.keep_one);
    if (r.drop) tasks[t] = drop(tasks[t], d[t], r.rescale, seed, name + "#" + std::to_string(t));
  }
  double wsum = std::accumulate(w.begin(), w.end(), 0.0);
  if (std::fabs(wsum) < 1e-8) wsum = 1;
  std::vector<double> out(m);
  for (std::size_t j = 0; j < m; ++j) {
    std::vector<double> e(n);
    for (std::size_t t = 0; t < n; ++t) e[t] = r.elect_weighted ? w[t] * tasks[t][j] : tasks[t][j];
    double vote = 0;
    for (const auto v : e) vote += r.elect_count ? double((v > 0) - (v < 0)) : v;
    const double majority = vote >= 0 ? 1 : -1;
    double sum = 0, count = 0, weight = 0;
    for (std::size_t t = 0; t < n; ++t) {
      const double s = (e[t] > 0) - (e[t] < 0);
      if (r.elect && s != majority) continue;
      sum += w[t] * tasks[t][j];
      count += 1;
      weight += w[t];
    }
    double div = 1;
    if (r.normalize == 1) div = std::max(count, 1.0);
    if (r.normalize == 2) div = weight == 0 ? 1 : weight;
    if (r.normalize == 3) div = wsum;
    out[j] = sum / div * r.lambda;
  }
  return out;
}

}  // namespace revmerge::reference
