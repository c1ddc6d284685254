#pragma once
// The thinning merges' steps (methods/classic/sparsify.cpp, thinning.hpp, combine.cpp): the
// magnitudes' statistics and histograms, the trims' ties, DARE's and DELLA's drops, and the
// combine of the tasks' thinned values.
#include <cstdint>

#include "kernels/elementwise_step.hpp"

namespace revmerge::kernels {

// The piece's elements of lane l of block c, in index order.
REVMERGE_HD_INLINE void lane_stats(const ElementwiseStep& s, std::int64_t index) {
  const Lane lane = piece_lane(s, index);
  const std::int64_t c = lane.c, at = lane.at, end = lane.end;
  std::int64_t i = lane.i;
  double before = s.before ? s.before[at] : 0.0, after = s.after ? s.after[at] : 0.0;
  double above[kMaxTrimRules] = {};
  std::uint64_t equal[kMaxTrimRules] = {};
  for (int r = 0; r < s.rules; ++r) above[r] = s.above[r] ? s.above[r][at] : 0.0;
  const CounterThreshold draw(s.seed, s.stream);
  for (; i < end; i += kStatLanes) {
    const float v = s.x[i - s.first];
    const double a = bits_float(magnitude_bits(v));  // |v|, +0 for −0
    before += a;
    if (s.after)
      after += (s.keep ? s.keep[i - s.first] != 0 : draw.below(static_cast<std::uint64_t>(i), s.limit)) ? a : 0.0;
    for (int r = 0; r < s.rules; ++r) {
      const std::uint32_t bits = magnitude_bits(v);
      equal[r] += bits == s.rule[r].threshold;
      if (bits > s.rule[r].threshold) above[r] += a;
    }
  }
  if (s.before) s.before[at] = before;
  if (s.after) s.after[at] = after;
  for (int r = 0; r < s.rules; ++r) {
    if (s.rule[r].trivial) continue;  // decided without looking: nothing to count
    if (s.above[r]) s.above[r][at] = above[r];
    if (equal[r] != 0) atomic_add_u64(s.equal[r] + c, equal[r]);
  }
}

REVMERGE_HD_INLINE void histogram_element(const ElementwiseStep& s, std::int64_t j) {
  const std::uint32_t b = magnitude_bits(s.x[j]);
  if (s.low_of < 0) atomic_add_u64(s.histogram + (b >> 16), 1);
  else if ((b >> 16) == s.rule[s.low_of].high) atomic_add_u64(s.histogram + (b & 0xffffu), 1);
}

REVMERGE_HD_INLINE void tie_counts(const ElementwiseStep& s, std::int64_t g) {
  std::int64_t begin, end;
  chunk_range(s, g, begin, end);
  for (int r = 0; r < s.rules; ++r) {
    std::int64_t ties = 0;
    if (!s.rule[r].trivial)
      for (std::int64_t i = begin; i < end; ++i) ties += magnitude_bits(s.x[i - s.first]) == s.rule[r].threshold;
    s.chunk_ties[r][g] = ties;
  }
}

// Block index (of the piece's blocks): each chunk's allowance is what its block still allowed
// when the piece began, less the ties of the chunks before it; the block's carried allowance
// loses the piece's ties.
REVMERGE_HD_INLINE void tie_scan(const ElementwiseStep& s, std::int64_t index) {
  const std::int64_t c = s.first / kStatBlock + index;
  const std::int64_t g0 = s.first / kTieChunk, chunks = piece_chunks(s);
  const std::int64_t lo = c * (kStatBlock / kTieChunk) - g0, hi = lo + kStatBlock / kTieChunk;
  for (int r = 0; r < s.rules; ++r) {
    std::int64_t left = s.left[r][c];
    for (std::int64_t g = lo < 0 ? 0 : lo; g < hi && g < chunks; ++g) {
      s.chunk_left[r][g] = left;
      left -= s.chunk_ties[r][g] < left ? s.chunk_ties[r][g] : left;
    }
    s.left[r][c] = left;
  }
}

REVMERGE_HD_INLINE void trim_chunk(const ElementwiseStep& s, std::int64_t g) {
  std::int64_t begin, end;
  chunk_range(s, g, begin, end);
  std::int64_t left[kMaxTrimRules] = {};
  for (int r = 0; r < s.rules; ++r) left[r] = s.chunk_left[r][g];
  for (std::int64_t i = begin; i < end; ++i) {
    float& v = s.x[i - s.first];
    const bool in = inside_rule(s.rule[0], v, left[0]);
    const bool out = s.rules > 1 && inside_rule(s.rule[1], v, left[1]);
    v = kept_or_zero(in & !out, rescaled(v, s.factor));
  }
}

REVMERGE_HD_INLINE void drop_element(const ElementwiseStep& s, std::int64_t j) {
  const CounterThreshold draw(s.seed, s.stream);
  const bool drawn = s.keep ? s.keep[j] != 0 : draw.below(static_cast<std::uint64_t>(s.first + j), s.limit);
  s.x[j] = kept_or_zero(!s.zero_all && drawn, rescaled(s.x[j], s.factor));
}

/// DELLA's keep probability of the element of ascending rank `rank` (1: the smallest magnitude)
/// in a row of `length`, as mergekit computes it: rank_norm = (rank − 1) / (length − 1) clamped
/// to [0, 1], then (density − ε) + rank_norm · 2 · ε, each step rounded to f32 (no contraction:
/// −ffp-contract=off, --fmad=false). A row of one element divides 0 by 0 there; here it sits in
/// the middle.
REVMERGE_HD_INLINE float della_probability(std::int64_t rank, std::int64_t length, double density, double epsilon) {
  float norm = 0.5f;
  if (length > 1) {
    norm = static_cast<float>(rank - 1) / static_cast<float>(length - 1);
    norm = norm < 0.0f ? 0.0f : 1.0f < norm ? 1.0f : norm;
  }
  const float spread = norm * 2.0f * static_cast<float>(epsilon);
  return static_cast<float>(density - epsilon) + spread;
}

// Element j's place from the top of its row — the elements of larger magnitude, and those of
// equal magnitude before it (a stable sort's order, descending) — counted over the row: a
// thread's independent loop, the row's values read by every thread of the row at once.
REVMERGE_HD_INLINE void della_keep_element(const ElementwiseStep& s, std::int64_t j) {
  const std::int64_t group = s.row * s.inner, r = j % group, at = r / s.inner;
  const float* row = s.x + (j - r) + r % s.inner;
  const std::uint32_t mine = magnitude_bits(row[at * s.inner]);
  std::int64_t place = 0;
  for (std::int64_t k = 0; k < s.row; ++k) {
    const std::uint32_t b = magnitude_bits(row[k * s.inner]);
    place += (b > mine) | ((b == mine) & (k < at));
  }
  const float p = della_probability(s.row - place, s.row, s.density, s.epsilon);
  s.keep[j] = CounterThreshold(s.seed, s.stream).below(static_cast<std::uint64_t>(s.first + j), CounterThreshold::limit(p));
}

/// Element j of the combine: combine.cpp's combine_block for one element, the same operations
/// in the same order (every sum over the tasks in task order, in double).
REVMERGE_HD_INLINE void combine_element(const ElementwiseStep& s, std::int64_t j) {
  const std::int64_t count = s.count;
  double vote = 0;
  if (s.elect)
    for (int t = 0; t < s.n; ++t) {
      const double e = (s.elect_on_weighted ? s.weights[t] : 1.0) * s.x[t * count + j];
      vote += s.elect_by_count ? static_cast<double>((e > 0) - (e < 0)) : e;
    }
  vote = vote >= 0 ? 1.0 : -1.0;
  double sum = 0, agreeing = 0, agreeing_weight = 0;
  for (int t = 0; t < s.n; ++t) {
    const double wt = s.weights[t], we = s.elect_on_weighted ? s.weights[t] : 1.0;
    const double v = s.x[t * count + j];
    if (!s.elect) {
      sum += wt * v;
      continue;
    }
    const double ok = static_cast<double>(we * v * vote > 0);
    sum += ok * (wt * v);
    agreeing += ok;
    agreeing_weight += ok * wt;
  }
  double merged = 0;
  switch (s.normalize) {
    case CombineNormalize::none: merged = sum / 1.0 * s.lambda; break;
    case CombineNormalize::agreeing_count: merged = sum / (agreeing < 1.0 ? 1.0 : agreeing) * s.lambda; break;
    case CombineNormalize::agreeing_weight:
      merged = sum / (agreeing_weight == 0 ? 1.0 : agreeing_weight) * s.lambda;
      break;
    case CombineNormalize::weight_sum: merged = sum / s.weight_sum * s.lambda; break;
    case CombineNormalize::agreeing_weight_floor:
      merged = sum / (agreeing_weight < 1e-6 ? 1e-6 : agreeing_weight) * s.lambda;
      break;
  }
  float out = static_cast<float>(merged);
  if (s.has_base) out += s.base[j];
  s.out[j] = out;
}

}  // namespace revmerge::kernels
