#pragma once
// The steps of the merges that select elements by statistics of the data: SCE's variances
// (methods/classic/sce.cpp), ram's changes and arcee_fusion's importances
// (methods/classic/selective.cpp).
#include <cmath>
#include <cstdint>

#include "kernels/elementwise_step.hpp"
#include "kernels/exp_log.hpp"

namespace revmerge::kernels {

// ---- sce (methods/classic/sce.cpp) ----

/// The population variance of element j across the n tasks of x (n × count), in f64: the
/// mean in task order, then the squared differences in task order.
REVMERGE_HD_INLINE double element_variance(const float* x, int n, std::int64_t count, std::int64_t j) {
  double mean = 0, sq = 0;
  for (int t = 0; t < n; ++t) mean += x[t * count + j];
  mean /= static_cast<double>(n);
  for (int t = 0; t < n; ++t) {
    const double d = x[t * count + j] - mean;
    sq += d * d;
  }
  return sq / static_cast<double>(n);
}

/// A double's bits in an order that is the values' order (positive above negative): a negative
/// value's bits inverted, another's sign bit set — without a branch, so that host loops over
/// it vectorize.
REVMERGE_HD_INLINE std::uint64_t ordered_bits(double v) {
  std::uint64_t b;
  memcpy(&b, &v, 8);
  return b ^ (static_cast<std::uint64_t>(static_cast<std::int64_t>(b) >> 63) | (std::uint64_t{1} << 63));
}

REVMERGE_HD_INLINE void sce_lane(const ElementwiseStep& s, std::int64_t index) {
  const Lane lane = piece_lane(s, index);
  if (s.sce_pass == 5) {
    double acc[kMaxElementwiseInputs];
    for (int t = 0; t < s.n; ++t) acc[t] = s.stock[t * s.stock_stride + lane.at];
    for (std::int64_t i = lane.i; i < lane.end; i += kStatLanes)
      for (int t = 0; t < s.n; ++t) {
        const double v = s.x[t * s.count + (i - s.first)];
        acc[t] += v * v;
      }
    for (int t = 0; t < s.n; ++t) s.stock[t * s.stock_stride + lane.at] = acc[t];
    return;
  }
  std::uint64_t counted = 0;
  const int shift = 48 - 16 * (s.sce_pass < 4 ? s.sce_pass : 0);
  for (std::int64_t i = lane.i; i < lane.end; i += kStatLanes) {
    const double v = element_variance(s.x, s.n, s.count, i - s.first);
    if (s.sce_pass == 4) {
      counted += v == s.threshold;
      continue;
    }
    counted += v != 0;
    const std::uint64_t k = ordered_bits(v);
    if (s.sce_pass == 0 || (k >> (shift + 16)) == s.prefix) atomic_add_u64(s.histogram + ((k >> shift) & 0xffffu), 1);
  }
  if (counted == 0) return;
  if (s.sce_pass == 4) atomic_add_u64(s.equal[0] + lane.c, counted);
  else if (s.sce_pass == 0) atomic_add_u64(s.counts, counted);
}

REVMERGE_HD_INLINE void sce_ties(const ElementwiseStep& s, std::int64_t g) {
  std::int64_t begin, end, ties = 0;
  chunk_range(s, g, begin, end);
  for (std::int64_t i = begin; i < end; ++i) ties += element_variance(s.x, s.n, s.count, i - s.first) == s.threshold;
  s.chunk_ties[0][g] = ties;
}

REVMERGE_HD_INLINE void sce_select(const ElementwiseStep& s, std::int64_t g) {
  std::int64_t begin, end;
  chunk_range(s, g, begin, end);
  std::int64_t left = s.zero_all ? 0 : s.chunk_left[0][g];
  for (std::int64_t i = begin; i < end; ++i) {
    const std::int64_t j = i - s.first;
    bool keep = false;
    if (!s.zero_all) {
      const double v = element_variance(s.x, s.n, s.count, j);
      const bool tie = v == s.threshold && left > 0;
      left -= tie;
      keep = v > s.threshold || tie;
    }
    if (!keep)
      for (int t = 0; t < s.n; ++t) s.x[t * s.count + j] = 0.0f;
  }
}

// ---- ram, ramplus_tl (methods/classic/selective.cpp) ----

/// Whether model i changes element j of the piece: |x − base| > ε in f64.
REVMERGE_HD_INLINE bool ram_changed(const ElementwiseStep& s, int i, std::int64_t j) {
  const double d = static_cast<double>(s.x[i * s.count + j]) - s.base[j];
  return (d < 0 ? -d : d) > s.epsilon;
}

REVMERGE_HD_INLINE int ram_changes(const ElementwiseStep& s, std::int64_t j) {
  int c = 0;
  for (int i = 0; i < s.n; ++i) c += ram_changed(s, i, j);
  return c;
}

// The lane's counts, added once per task and kind (integers: the order does not matter).
REVMERGE_HD_INLINE void ram_counts(const ElementwiseStep& s, std::int64_t index) {
  const Lane lane = piece_lane(s, index);
  std::uint64_t shared[kMaxElementwiseInputs] = {}, unique[kMaxElementwiseInputs] = {};
  for (std::int64_t i = lane.i; i < lane.end; i += kStatLanes) {
    const std::int64_t j = i - s.first;
    const int c = ram_changes(s, j);
    for (int t = 0; t < s.n; ++t)
      if (ram_changed(s, t, j)) ++(c > 1 ? shared : unique)[t];
  }
  for (int t = 0; t < s.n; ++t) {
    if (shared[t] != 0) atomic_add_u64(s.counts + 2 * t, shared[t]);
    if (unique[t] != 0) atomic_add_u64(s.counts + 2 * t + 1, unique[t]);
  }
}

REVMERGE_HD_INLINE void ram_blend(const ElementwiseStep& s, std::int64_t j) {
  const int c = ram_changes(s, j);
  double sum = 0;
  for (int i = 0; i < s.n; ++i)
    if (ram_changed(s, i, j))
      sum += (static_cast<double>(s.x[i * s.count + j]) - s.base[j]) * (c == 1 ? s.weights[i] : 1.0);
  s.out[j] = static_cast<float>(s.base[j] + (c > 1 ? sum / c : sum));
}

// ---- arcee_fusion (methods/classic/selective.cpp) ----

/// One term p log(p / q) of arcee_fusion's divergence from the two softmaxes' exps and the
/// reciprocals of their sums (1e-8 added to each probability).
REVMERGE_HD_INLINE double fusion_term(double ew, double eb, double inv_w, double inv_b) {
  const double p = ew * inv_w + 1e-8, q = eb * inv_b + 1e-8;
  return p * log_f64(p / q);
}
/// fusion_term where p / q is known to be a positive normal double (both exps in [0, 1] and
/// both sums at least 1): the same bits by log_f64_normal.
REVMERGE_HD_INLINE double fusion_term_normal(double ew, double eb, double inv_w, double inv_b) {
  const double p = ew * inv_w + 1e-8, q = eb * inv_b + 1e-8;
  return p * log_f64_normal(p / q);
}

/// KL(softmax(w) ‖ softmax(b)) over one row of `row` elements, 1e-8 added to every probability
/// of both softmaxes. exp and log are exp_f64 and log_f64, the maxima in index order, and each
/// sum in kStatLanes interleaved lanes (element j in lane j mod kStatLanes, each lane in index
/// order, the lanes added in block_lanes_sum's tree), so the host and a GPU give the same bits.
/// Each value is formed where it is added (a GPU thread has no room for a row); the host keeps
/// a row's exps and terms and adds them as vectors, in this order (methods/classic/selective.cpp).
REVMERGE_HD_INLINE double fusion_row_kl(const float* w, const float* b, std::int64_t row) {
  float top_w = w[0], top_b = b[0];
  for (std::int64_t j = 1; j < row; ++j) {
    if (w[j] > top_w) top_w = w[j];
    if (b[j] > top_b) top_b = b[j];
  }
  const auto exp_w = [&](std::int64_t j) { return exp_f64(static_cast<double>(w[j]) - top_w); };
  const auto exp_b = [&](std::int64_t j) { return exp_f64(static_cast<double>(b[j]) - top_b); };
  double sum_w[kStatLanes] = {}, sum_b[kStatLanes] = {}, kl[kStatLanes] = {};
  // Whole groups of kStatLanes, then the rest (the same order in each lane).
  const std::int64_t whole = row - row % kStatLanes;
  const auto add_exps = [&](std::int64_t j0, std::int64_t lanes) {
    for (std::int64_t l = 0; l < lanes; ++l) {
      sum_w[l] += exp_w(j0 + l);
      sum_b[l] += exp_b(j0 + l);
    }
  };
  for (std::int64_t j0 = 0; j0 < whole; j0 += kStatLanes) add_exps(j0, kStatLanes);
  add_exps(whole, row - whole);
  const double inv_w = 1.0 / block_lanes_sum(sum_w), inv_b = 1.0 / block_lanes_sum(sum_b);
  const auto add_terms = [&](std::int64_t j0, std::int64_t lanes) {
    for (std::int64_t l = 0; l < lanes; ++l) kl[l] += fusion_term(exp_w(j0 + l), exp_b(j0 + l), inv_w, inv_b);
  };
  for (std::int64_t j0 = 0; j0 < whole; j0 += kStatLanes) add_terms(j0, kStatLanes);
  add_terms(whole, row - whole);
  return block_lanes_sum(kl);
}

/// An element's importance: |w − b| in f64 times its row's divergence.
REVMERGE_HD_INLINE double fusion_importance(float w, float b, double kl) {
  return ::fabs(static_cast<double>(w) - b) * kl;
}

REVMERGE_HD_INLINE void fusion_row(const ElementwiseStep& s, std::int64_t r) {
  s.row_t[r] = fusion_row_kl(s.x + r * s.row, s.base + r * s.row, s.row);
}

REVMERGE_HD_INLINE void fusion_histogram(const ElementwiseStep& s, std::int64_t j) {
  const std::uint64_t k = ordered_bits(fusion_importance(s.x[j], s.base[j], s.row_t[j / s.row]));
  const int shift = 48 - 16 * s.multi_pass;
  if (s.multi_pass == 0 || (k >> (shift + 16)) == s.prefix) atomic_add_u64(s.histogram + ((k >> shift) & 0xffffu), 1);
}

REVMERGE_HD_INLINE void fusion_blend(const ElementwiseStep& s, std::int64_t j) {
  s.out[j] = fusion_importance(s.x[j], s.base[j], s.row_t[j / s.row]) >= s.threshold ? s.x[j] : s.base[j];
}

}  // namespace revmerge::kernels
