#pragma once
// The spherical merges' steps (methods/classic/spherical.cpp): nuslerp, multislerp, karcher.
#include <cstdint>

#include "kernels/elementwise_step.hpp"

namespace revmerge::kernels {

// ---- nuslerp (methods/classic/spherical.cpp) ----

/// Model m's value at element j of the piece: its task vector where there is a base.
REVMERGE_HD_INLINE double pair_value(const ElementwiseStep& s, int m, std::int64_t j) {
  const double v = s.x[m * s.count + j];
  return s.has_base ? v - s.base[j] : v;
}

// Adds elements from, from + step, … below `to` of the piece into the sums at index `at`.
REVMERGE_HD_INLINE void pair_sums(const ElementwiseStep& s, std::int64_t from, std::int64_t to, std::int64_t step,
                                  std::int64_t at) {
  double aa = s.sums[0][at], bb = s.sums[1][at], ab = s.sums[2][at];
  for (std::int64_t j = from; j < to; j += step) {
    const double a = pair_value(s, 0, j), b = pair_value(s, 1, j);
    aa += a * a;
    bb += b * b;
    ab += a * b;
  }
  s.sums[0][at] = aa;
  s.sums[1][at] = bb;
  s.sums[2][at] = ab;
}

REVMERGE_HD_INLINE void pair_lane(const ElementwiseStep& s, std::int64_t index) {
  const Lane lane = piece_lane(s, index);
  pair_sums(s, lane.i - s.first, lane.end - s.first, kStatLanes, lane.at);
}

REVMERGE_HD_INLINE void pair_row(const ElementwiseStep& s, std::int64_t r) {
  s.sums[0][r] = s.sums[1][r] = s.sums[2][r] = 0;
  pair_sums(s, r * s.row, (r + 1) * s.row, 1, r);
}

REVMERGE_HD_INLINE void pair_column(const ElementwiseStep& s, std::int64_t c) { pair_sums(s, c, s.count, s.row, c); }

REVMERGE_HD_INLINE void pair_blend(const ElementwiseStep& s, std::int64_t j) {
  const std::int64_t v = s.pair_layout == 0 ? 0 : s.pair_layout == 1 ? j / s.row : j % s.row;
  const double* c = s.coef + 4 * v;
  const double a = pair_value(s, 0, j), b = pair_value(s, 1, j);
  const double r = c[0] != 0 ? (1 - s.t) * a + s.t * b : (c[1] * a + c[2] * b) / c[3];
  s.out[j] = static_cast<float>(s.has_base ? r + s.base[j] : r);
}

// ---- multislerp and karcher (methods/classic/spherical.cpp, SphereSums) ----
// Both merge the models' directions on the sphere, and every mean and tangent they take stays in
// the span of those directions: the host decides them from the vectors' Gram matrix (one pass:
// the m(m + 1)/2 sums Σ v_a v_b, in stock_pair's order) and the merged element is Σ_i coef[i] v_i.
// The vectors: karcher's models (the base first, where has_base, then the n tasks in x);
// multislerp's tasks, less the base where has_base (task_vectors; the base added back after).

// Vector i's values in the piece (the base first, where it is one of the vectors).
REVMERGE_HD_INLINE const float* gram_values(const ElementwiseStep& s, int i) {
  if (!s.has_base || s.task_vectors) return s.x + i * s.count;
  return i == 0 ? s.base : s.x + (i - 1) * s.count;
}

// Element j of a vector whose values are v (the base's subtracted, in f64, for task vectors).
REVMERGE_HD_INLINE double gram_value(const ElementwiseStep& s, const float* v, std::int64_t j) {
  return s.task_vectors ? static_cast<double>(v[j]) - static_cast<double>(s.base[j]) : static_cast<double>(v[j]);
}

// Index: group g of a lane's Gram sums (as stock_lane's).
REVMERGE_HD_INLINE void gram_lane(const ElementwiseStep& s, std::int64_t index) {
  const int vectors = gram_vectors(s), all = stock_sums(vectors), groups = stock_groups(vectors);
  const int g = static_cast<int>(index % groups), q0 = g * kStockGroup;
  const int sums = all - q0 < kStockGroup ? all - q0 : kStockGroup;
  const Lane lane = piece_lane(s, index / groups);
  const float* pa[kStockGroup];
  const float* pb[kStockGroup];
  double v[kStockGroup];
  for (int k = 0; k < sums; ++k) {
    int a, b;
    stock_pair(vectors, q0 + k, a, b);
    pa[k] = gram_values(s, a);
    pb[k] = gram_values(s, b);
    v[k] = s.stock[(q0 + k) * s.stock_stride + lane.at];
  }
  for (std::int64_t j = lane.i - s.first; j < lane.end - s.first; j += kStatLanes)
    for (int k = 0; k < sums; ++k) v[k] += gram_value(s, pa[k], j) * gram_value(s, pb[k], j);
  for (int k = 0; k < sums; ++k) s.stock[(q0 + k) * s.stock_stride + lane.at] = v[k];
}

REVMERGE_HD_INLINE void gram_blend(const ElementwiseStep& s, std::int64_t j) {
  double r = 0;  // the vectors' terms in order
  for (int i = 0; i < gram_vectors(s); ++i) r += s.coef[i] * gram_value(s, gram_values(s, i), j);
  s.out[j] = static_cast<float>(s.task_vectors ? r + s.base[j] : r);
}

}  // namespace revmerge::kernels
