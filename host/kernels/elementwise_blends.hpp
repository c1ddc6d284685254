#pragma once
// The steps of the merges that blend whole models: SLERP and nearswap (two models),
// model_stock, passthrough's scale (methods/classic/two_models.cpp, model_stock.cpp).
#include <cstdint>

#include "kernels/elementwise_step.hpp"

namespace revmerge::kernels {

REVMERGE_HD_INLINE void dot_lanes(const ElementwiseStep& s, std::int64_t index) {
  const Lane lane = piece_lane(s, index);
  double n0 = s.sums[0][lane.at], n1 = s.sums[1][lane.at], d = s.sums[2][lane.at];
  for (std::int64_t i = lane.i; i < lane.end; i += kStatLanes) {
    const double v0 = s.base[i - s.first], v1 = s.x[i - s.first];
    n0 += v0 * v0;
    n1 += v1 * v1;
    d += v0 * v1;
  }
  s.sums[0][lane.at] = n0;
  s.sums[1][lane.at] = n1;
  s.sums[2][lane.at] = d;
}

REVMERGE_HD_INLINE void blend_element(const ElementwiseStep& s, std::int64_t j) {
  s.out[j] = static_cast<float>(s.s0 * s.base[j] + s.s1 * s.x[j]);
}

REVMERGE_HD_INLINE void nearswap_element(const ElementwiseStep& s, std::int64_t j) {
  const double v0 = s.base[j], v1 = s.x[j];
  const double gap = v0 > v1 ? v0 - v1 : v1 - v0;       // |v0 − v1|, exact as fabs
  const double d = gap < 1e-6 ? 1e-6 : gap;              // mergekit's floor
  const double w = s.t / d < 1.0 ? s.t / d : 1.0;
  s.out[j] = static_cast<float>(w * v1 + (1 - w) * v0);
}

// ---- model_stock (methods/classic/model_stock.cpp): t = N cos θ / (1 + (N − 1) cos θ) ----

/// One pair's cosine as mergekit clamps it: dot / max(‖δ_a‖‖δ_b‖, 1e-6) in [−1, 1].
REVMERGE_HD_INLINE double stock_cosine(double dot, double sq_a, double sq_b) {
  const double norms = sqrt(sq_a) * sqrt(sq_b);
  const double c = dot / (norms < 1e-6 ? 1e-6 : norms);
  return c < -1.0 ? -1.0 : 1.0 < c ? 1.0 : c;
}

/// t from the pairs' cosines summed in pair order; where 1 + (N − 1) cos θ is within 1e-6 of 0
/// there is no finite estimate, and mergekit keeps the base (t = 0).
REVMERGE_HD_INLINE double stock_t(double cos_sum, int n) {
  const double nd = n, cos = cos_sum / static_cast<double>(n * (n - 1) / 2);
  const double denominator = 1 + (nd - 1) * cos;
  return (denominator < 0 ? -denominator : denominator) < 1e-6 ? 0.0 : nd * cos / denominator;
}

REVMERGE_HD_INLINE double stock_delta(const ElementwiseStep& s, int t, std::int64_t j) {
  return static_cast<double>(s.x[t * s.count + j]) - s.base[j];
}

// Index: group g of a lane's sums.
REVMERGE_HD_INLINE void stock_lane(const ElementwiseStep& s, std::int64_t index) {
  const int groups = stock_groups(s.n), g = static_cast<int>(index % groups);
  const int q0 = g * kStockGroup, sums = stock_sums(s.n) - q0 < kStockGroup ? stock_sums(s.n) - q0 : kStockGroup;
  const Lane lane = piece_lane(s, index / groups, s.stock_block);
  int a[kStockGroup], b[kStockGroup];
  double v[kStockGroup];
  for (int k = 0; k < sums; ++k) {
    stock_pair(s.n, q0 + k, a[k], b[k]);
    v[k] = s.stock[(q0 + k) * s.stock_stride + lane.at];
  }
  for (std::int64_t i = lane.i; i < lane.end; i += kStatLanes)
    for (int k = 0; k < sums; ++k) v[k] += stock_delta(s, a[k], i - s.first) * stock_delta(s, b[k], i - s.first);
  for (int k = 0; k < sums; ++k) s.stock[(q0 + k) * s.stock_stride + lane.at] = v[k];
}

// Row r of the piece: its squared norms, then each pair's dot product and cosine, every sum in
// index order.
REVMERGE_HD_INLINE void stock_row(const ElementwiseStep& s, std::int64_t r) {
  double sq[kMaxElementwiseInputs];
  const std::int64_t begin = r * s.row, end = begin + s.row;
  for (int a = 0; a < s.n; ++a) {
    double v = 0;
    for (std::int64_t j = begin; j < end; ++j) v += stock_delta(s, a, j) * stock_delta(s, a, j);
    sq[a] = v;
  }
  double cos_sum = 0;
  for (int a = 0; a < s.n; ++a)
    for (int b = a + 1; b < s.n; ++b) {
      double dot = 0;
      for (std::int64_t j = begin; j < end; ++j) dot += stock_delta(s, a, j) * stock_delta(s, b, j);
      cos_sum += stock_cosine(dot, sq[a], sq[b]);
    }
  s.row_t[r] = stock_t(cos_sum, s.n);
}

REVMERGE_HD_INLINE void scale_element(const ElementwiseStep& s, std::int64_t j) {
  s.out[j] = rescaled(s.x[j], s.factor);
}

REVMERGE_HD_INLINE void stock_blend(const ElementwiseStep& s, std::int64_t j) {
  double mean = 0;
  for (int t = 0; t < s.n; ++t) mean += stock_delta(s, t, j);
  const double t = s.row_t ? s.row_t[j / s.row] : s.t;
  s.out[j] = static_cast<float>(s.base[j] + t * (mean / static_cast<double>(s.n)));
}

}  // namespace revmerge::kernels
