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
// The models are the base (when has_base) then the n tasks in x. The table `coef` holds what
// the passes decided: [0] a = 1 / V, [1] the first mean's norm, [2] tol, [3] V (the models whose
// norm is above tol), [4] the models, [5] the scale (the models' mean norm), [6] S (the steps
// taken); from kKarcherHeader the models' norms, then the V models' indices, then per step
// {cos ‖t‖, sin ‖t‖, ‖t‖, the moved mean's norm, d (V), f (V), skip (V)}: step S is the one
// the passes are deciding.

constexpr int kKarcherHeader = 8;

REVMERGE_HD_INLINE const double* karcher_step(const double* table, int k) {
  const int models = static_cast<int>(table[4]), valid = static_cast<int>(table[3]);
  return table + kKarcherHeader + models + valid + k * (4 + 3 * valid);
}

REVMERGE_HD_INLINE double karcher_model(const ElementwiseStep& s, int i, std::int64_t j) {
  if (!s.has_base) return s.x[i * s.count + j];
  return i == 0 ? static_cast<double>(s.base[j]) : static_cast<double>(s.x[(i - 1) * s.count + j]);
}

/// The valid models' directions at an element: value / norm.
REVMERGE_HD_INLINE void karcher_units(const double* table, const double* x, double* u) {
  const int models = static_cast<int>(table[4]), valid = static_cast<int>(table[3]);
  for (int v = 0; v < valid; ++v) {
    const int i = static_cast<int>(table[kKarcherHeader + models + v]);
    u[v] = x[i] / table[kKarcherHeader + i];
  }
}

REVMERGE_HD_INLINE double karcher_first_mean(const double* table, const double* u) {
  double m = 0;
  for (int v = 0; v < static_cast<int>(table[3]); ++v) m += table[0] * u[v];
  return m;
}

/// Step k's tangent at the mean m, the directions within tol of it left out.
REVMERGE_HD_INLINE double karcher_tangent(const double* table, int k, const double* u, double m) {
  const int valid = static_cast<int>(table[3]);
  const double* st = karcher_step(table, k);
  double t = 0;
  for (int v = 0; v < valid; ++v)
    if (st[4 + 2 * valid + v] == 0) t += st[4 + valid + v] * (u[v] - st[4 + v] * m);
  return t;
}

/// The element's mean after `steps` steps, replayed from its directions.
REVMERGE_HD_INLINE double karcher_mean_after(const double* table, const double* u, int steps) {
  double m = table[1] < table[2] ? u[0] : karcher_first_mean(table, u) / table[1];
  for (int k = 0; k < steps; ++k) {
    const double* st = karcher_step(table, k);
    m = st[0] * m + st[1] * (karcher_tangent(table, k, u, m) / st[2]);
    if (st[3] > table[2]) m /= st[3];
  }
  return m;
}

/// Step k's move of the mean m: cos ‖t‖ · m + sin ‖t‖ · t / ‖t‖ (before its normalisation).
REVMERGE_HD_INLINE double karcher_moved(const double* table, int k, const double* u, double m) {
  const double* st = karcher_step(table, k);
  return st[0] * m + st[1] * (karcher_tangent(table, k, u, m) / st[2]);
}

REVMERGE_HD_INLINE void karcher_lane(const ElementwiseStep& s, std::int64_t index) {
  const Lane lane = piece_lane(s, index);
  const double* table = s.coef;
  const int models = static_cast<int>(table[4]), valid = static_cast<int>(table[3]);
  const int steps = static_cast<int>(table[6]);
  const int sums = s.multi_pass == 0 ? models : s.multi_pass == 2 ? valid : 1;
  double acc[kMaxElementwiseInputs + 1], x[kMaxElementwiseInputs + 1], u[kMaxElementwiseInputs + 1];
  for (int q = 0; q < sums; ++q) acc[q] = s.stock[q * s.stock_stride + lane.at];
  for (std::int64_t i = lane.i; i < lane.end; i += kStatLanes) {
    const std::int64_t j = i - s.first;
    for (int q = 0; q < models; ++q) x[q] = karcher_model(s, q, j);
    if (s.multi_pass == 0) {
      for (int q = 0; q < models; ++q) acc[q] += x[q] * x[q];
      continue;
    }
    karcher_units(table, x, u);
    if (s.multi_pass == 1) {
      const double m = karcher_first_mean(table, u);
      acc[0] += m * m;
      continue;
    }
    const double m = karcher_mean_after(table, u, steps);
    if (s.multi_pass == 2) {
      for (int v = 0; v < valid; ++v) acc[v] += m * u[v];
    } else if (s.multi_pass == 3) {
      const double t = karcher_tangent(table, steps, u, m);
      acc[0] += t * t;
    } else {
      const double moved = karcher_moved(table, steps, u, m);
      acc[0] += moved * moved;
    }
  }
  for (int q = 0; q < sums; ++q) s.stock[q * s.stock_stride + lane.at] = acc[q];
}

REVMERGE_HD_INLINE void karcher_blend(const ElementwiseStep& s, std::int64_t j) {
  const double* table = s.coef;
  if (static_cast<int>(table[3]) == 0) {  // every model within tol of 0
    s.out[j] = 0.0f;
    return;
  }
  double x[kMaxElementwiseInputs + 1], u[kMaxElementwiseInputs + 1];
  for (int q = 0; q < static_cast<int>(table[4]); ++q) x[q] = karcher_model(s, q, j);
  karcher_units(table, x, u);
  s.out[j] = static_cast<float>(karcher_mean_after(table, u, static_cast<int>(table[6])) * table[5]);
}

}  // namespace revmerge::kernels
