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

// ---- multislerp (methods/classic/spherical.cpp) ----

// Element j's directions u_i = v_i / (‖v_i‖ + eps) into u and their weighted mean, in model order.
REVMERGE_HD_INLINE double multislerp_mean(const ElementwiseStep& s, std::int64_t j, double* u) {
  double m = 0;
  for (int i = 0; i < s.n; ++i) {
    u[i] = pair_value(s, i, j) / (s.norms[i] + s.eps);
    m += s.weights[i] * u[i];
  }
  return m;
}

// The weighted tangent at the normalised mean mm.
REVMERGE_HD_INLINE double multislerp_tangent(const ElementwiseStep& s, const double* u, double mm) {
  double t = 0;
  for (int i = 0; i < s.n; ++i) t += s.weights[i] * (u[i] - s.dots[i] * mm);
  return t;
}

REVMERGE_HD_INLINE void multislerp_lane(const ElementwiseStep& s, std::int64_t index) {
  const Lane lane = piece_lane(s, index);
  const bool per_model = s.multi_pass == 0 || s.multi_pass == 2;
  const int sums = per_model ? s.n : 1;
  double acc[kMaxElementwiseInputs], u[kMaxElementwiseInputs];
  for (int q = 0; q < sums; ++q) acc[q] = s.stock[q * s.stock_stride + lane.at];
  for (std::int64_t i = lane.i; i < lane.end; i += kStatLanes) {
    const std::int64_t j = i - s.first;
    if (s.multi_pass == 0) {
      for (int q = 0; q < s.n; ++q) {
        const double v = pair_value(s, q, j);
        acc[q] += v * v;
      }
      continue;
    }
    const double m = multislerp_mean(s, j, u);
    if (s.multi_pass == 1) {
      acc[0] += m * m;
    } else if (s.multi_pass == 2) {
      for (int q = 0; q < s.n; ++q) acc[q] += u[q] * (m / s.mean_norm);
    } else {
      const double t = multislerp_tangent(s, u, m / s.mean_norm);
      acc[0] += t * t;
    }
  }
  for (int q = 0; q < sums; ++q) s.stock[q * s.stock_stride + lane.at] = acc[q];
}

REVMERGE_HD_INLINE void multislerp_blend(const ElementwiseStep& s, std::int64_t j) {
  double r;
  if (s.n == 1) {
    r = pair_value(s, 0, j);
  } else if (s.degenerate) {
    r = s.weights[0] * pair_value(s, 0, j) + s.weights[1] * pair_value(s, 1, j);
  } else {
    double u[kMaxElementwiseInputs];
    const double m = multislerp_mean(s, j, u) / s.mean_norm;
    r = (m * s.s0 + multislerp_tangent(s, u, m) * s.s1) * s.factor;
  }
  s.out[j] = static_cast<float>(s.has_base ? r + s.base[j] : r);
}

// ---- karcher (methods/classic/spherical.cpp, KarcherSums) ----
// The models are the base (when has_base) then the n tasks in x. The Karcher mean of their
// directions u_i = x_i / ‖x_i‖ stays in their span at every step, so the host decides every
// step from their Gram matrix (one pass: the m(m + 1)/2 sums Σ x_a x_b, in stock_pair's order)
// and the merged element is Σ_i coef[i] · x_i, each model's coefficient holding its direction's
// weight, 1 / ‖x_i‖ and the scale.

REVMERGE_HD_INLINE int karcher_models(const ElementwiseStep& s) { return s.n + (s.has_base ? 1 : 0); }

// Model i's values in the piece.
REVMERGE_HD_INLINE const float* karcher_values(const ElementwiseStep& s, int i) {
  if (!s.has_base) return s.x + i * s.count;
  return i == 0 ? s.base : s.x + (i - 1) * s.count;
}

// Index: group g of a lane's Gram sums (as stock_lane's, the models' values themselves).
REVMERGE_HD_INLINE void karcher_lane(const ElementwiseStep& s, std::int64_t index) {
  const int models = karcher_models(s), all = stock_sums(models), groups = stock_groups(models);
  const int g = static_cast<int>(index % groups), q0 = g * kStockGroup;
  const int sums = all - q0 < kStockGroup ? all - q0 : kStockGroup;
  const Lane lane = piece_lane(s, index / groups);
  const float* pa[kStockGroup];
  const float* pb[kStockGroup];
  double v[kStockGroup];
  for (int k = 0; k < sums; ++k) {
    int a, b;
    stock_pair(models, q0 + k, a, b);
    pa[k] = karcher_values(s, a);
    pb[k] = karcher_values(s, b);
    v[k] = s.stock[(q0 + k) * s.stock_stride + lane.at];
  }
  for (std::int64_t j = lane.i - s.first; j < lane.end - s.first; j += kStatLanes)
    for (int k = 0; k < sums; ++k) v[k] += static_cast<double>(pa[k][j]) * static_cast<double>(pb[k][j]);
  for (int k = 0; k < sums; ++k) s.stock[(q0 + k) * s.stock_stride + lane.at] = v[k];
}

REVMERGE_HD_INLINE void karcher_blend(const ElementwiseStep& s, std::int64_t j) {
  double r = 0;  // the base's term first, then the tasks'
  if (s.has_base) r += s.coef[0] * static_cast<double>(s.base[j]);
  const double* coef = s.coef + (s.has_base ? 1 : 0);
  for (int t = 0; t < s.n; ++t) r += coef[t] * static_cast<double>(s.x[t * s.count + j]);
  s.out[j] = static_cast<float>(r);
}

}  // namespace revmerge::kernels
