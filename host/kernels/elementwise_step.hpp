#pragma once
// The steps of the full-model merges (task arithmetic, TIES, DARE, SLERP, …): one piece of a
// tensor at a time, for the host and the device alike. A step is a loop over independent
// indices — elements, chunks of elements, or a statistics block's lanes — each index one call
// of the step's routine; a backend runs the indices in any order and on any number of threads.
// Every sum is taken in a fixed order inside one index (a lane of a block, in index order;
// a task loop, in task order), and everything shared between indices is an integer (counts,
// the smallest index), so the results are the same bits on every backend — and the bits of the
// CPU's own merge (methods/classic/sparsify.cpp, combine.cpp), which keeps its statistics per
// the same blocks and lanes.
//
// This file: the step (ElementwiseStep, its kinds, how many indices it runs over) and what the
// routines share: the widening of the files' values, the statistics blocks' lanes, atomics.
// The routines are in one file per family (elementwise_*.hpp); elementwise.hpp lists them.
#include <cmath>
#include <cstdint>

#ifndef __CUDA_ARCH__
#include <atomic>
#endif

#include "kernels/counter_rng.hpp"
#include "kernels/float_bits.hpp"
#include "kernels/host_device.hpp"

namespace revmerge::kernels {

/// Statistics (L1 norms, counts of elements at a trim threshold) are kept per block of this
/// many elements of the tensor, each block's sums in kStatLanes lanes (element i in lane
/// i mod kStatLanes), every lane summed in index order. A lane is one GPU thread's sequential
/// sum: blocks this small give a 7b tensor's passes some 10⁵ threads.
constexpr std::int64_t kStatBlock = std::int64_t{1} << 12;
constexpr std::int64_t kStatLanes = 8;
/// A trim's ties are walked in chunks of this many elements (a divisor of kStatBlock).
constexpr std::int64_t kTieChunk = 256;
/// The most inputs (tasks, and a base) one step reads.
constexpr int kMaxElementwiseInputs = 64;
/// A trim keeps a set defined by at most this many rules (breadcrumbs: the kept set and the
/// outliers inside it).
constexpr int kMaxTrimRules = 2;

/// |v| as ordered bits: for finite floats the order of these integers is the order of |v|.
REVMERGE_HD_INLINE std::uint32_t magnitude_bits(float v) { return float_bits(v) & 0x7fffffffu; }

/// v where `keep`, else +0 (by a mask, not a branch).
REVMERGE_HD_INLINE float kept_or_zero(bool keep, float v) {
  return bits_float(float_bits(v) & (0u - static_cast<std::uint32_t>(keep)));
}

/// v · factor rounded to f32, or v itself where the factor is 1.
REVMERGE_HD_INLINE float rescaled(float v, double factor) {
  return factor == 1.0 ? v : static_cast<float>(v * factor);
}

/// *p = min(*p, v), atomically.
REVMERGE_HD_INLINE void atomic_min_u64(std::uint64_t* p, std::uint64_t v) {
#ifdef __CUDA_ARCH__
  atomicMin(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
#else
  std::atomic_ref<std::uint64_t> a(*p);
  std::uint64_t seen = a.load(std::memory_order_relaxed);
  while (v < seen && !a.compare_exchange_weak(seen, v, std::memory_order_relaxed)) {
  }
#endif
}

/// *p += v, atomically (integers: the order does not matter).
REVMERGE_HD_INLINE void atomic_add_u64(std::uint64_t* p, std::uint64_t v) {
#ifdef __CUDA_ARCH__
  atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
#else
  std::atomic_ref<std::uint64_t>(*p).fetch_add(v, std::memory_order_relaxed);
#endif
}

/// The rule of one magnitude trim (methods/classic/thinning.hpp): an element is inside when
/// its magnitude bits are above `threshold`, or equal to it and among the first allowed by its
/// block's allowance (in index order); a trivial rule keeps everything (`keep_all`) or nothing.
struct TrimRule {
  bool trivial = false, keep_all = false;
  std::uint32_t threshold = 0;
  std::uint32_t high = 0;  ///< the histogram of low bits counts the magnitudes with these high bits
};

/// Whether a value is inside `rule`, `left` the ties still allowed (decremented for a tie taken).
REVMERGE_HD_INLINE bool inside_rule(const TrimRule& rule, float v, std::int64_t& left) {
  if (rule.trivial) return rule.keep_all;
  const std::uint32_t b = magnitude_bits(v);
  const bool at = (b == rule.threshold) & (left > 0);
  left -= at;
  return (b > rule.threshold) | at;
}

enum class ElementwiseKind : std::int32_t {
  /// Per element: every input read in its own dtype, checked finite, the base subtracted.
  widen,
  /// Per lane of a statistics block: Σ|x|, and Σ|x| of the drop's kept elements, and per rule
  /// the count of elements at the threshold and Σ|x| above it.
  lane_stats,
  /// Per element: a histogram of 16 bits of the magnitudes.
  histogram,
  /// Per tie chunk: the elements at each rule's threshold.
  tie_counts,
  /// Per statistics block: the chunks' allowances (ties before them taken from the block's).
  tie_scan,
  /// Per tie chunk: the trim applied, the kept values rescaled.
  trim,
  /// Per element: the random drop applied (or DELLA's decisions in `keep`), the kept values
  /// rescaled.
  drop,
  /// Per element: DELLA's decision — the element's rank by magnitude in its row, its keep
  /// probability from the rank, its draw — into `keep`.
  della_keep,
  /// Per element: the tasks combined (weighted, sign-elected, summed, divided, scaled), the
  /// base added back.
  combine,
  /// Per lane of a statistics block: SLERP's Σ v0², Σ v1², Σ v0·v1 (v0 the base, v1 = x).
  dot_lanes,
  /// Per element: SLERP's blend s0 · v0 + s1 · v1.
  blend,
  /// Per element: nearswap's w · v1 + (1 − w) · v0, w = min(1, t / max(|v0 − v1|, 1e-6)).
  nearswap,
  /// Per (lane of a statistics block, group of sums): model_stock's sums over the task vectors
  /// δ_a = x_a − base — Σ δ_a² (sums 0 … n − 1), then Σ δ_a·δ_b for the pairs a < b in order.
  stock_lanes,
  /// Per row: model_stock's t of the row (filter_wise), from the row's sums in index order.
  stock_rows,
  /// Per element: model_stock's base + t · mean(δ), t the tensor's or the row's.
  stock_blend,
  /// Per element: passthrough's x · factor (x itself where the factor is 1).
  scale,
  /// nuslerp's sums Σ a², Σ b², Σ a·b of its two models' values a, b (task vectors where there is
  /// a base): per lane of a statistics block (the tensor one vector), per row of the piece (each
  /// row one vector), or per column (each column one vector, its rows added in order).
  pair_lanes,
  pair_rows,
  pair_columns,
  /// Per element: nuslerp's blend of a and b by its vector's coefficients, the base added back.
  pair_blend,
  /// Per lane of a statistics block and group of sums: the Gram sums Σ v_a v_b of multislerp's
  /// or karcher's vectors (their one pass), kStockGroup of them per index as stock_lanes.
  gram_lanes,
  /// Per element: Σ coef[i] · v_i over the vectors, the base added back for task vectors.
  gram_blend,
  /// Per lane of a statistics block: one of SCE's passes over the elements' variances across
  /// the tasks (sce_pass 0 … 3: a 16-bit digit's histogram of their ordered bits; 4: the ties
  /// at the threshold per block) or over the kept values (5: each task's Σ x²).
  sce_lanes,
  /// Per tie chunk: SCE's variances at the threshold.
  sce_ties,
  /// Per tie chunk: SCE's selection — the elements not kept zeroed in every task.
  sce_select,
  /// Per lane of a statistics block: ramplus_tl's count of each task's changes shared with
  /// another task and of its unique ones.
  ram_counts,
  /// Per element: ram's merge — a change made by one task alone taken (scaled by the task's
  /// factor), the changes of several tasks averaged, the base added back.
  ram_blend,
  /// Per row of the piece: arcee_fusion's divergence of the row's softmaxes into row_t.
  fusion_rows,
  /// Per element: a 16-bit digit (multi_pass 0 … 3, bits 63 … 48 first) of the ordered bits
  /// of arcee_fusion's importance counted into `histogram`, for the importances whose digits
  /// above it are `prefix`.
  fusion_histogram,
  /// Per element: the fine-tune's value where its importance reaches `threshold`, else the
  /// base's.
  fusion_blend,
};

/// What the combine divides the sum by (methods/classic/combine.hpp's Normalize).
enum class CombineNormalize : std::int32_t { none, agreeing_count, agreeing_weight, weight_sum, agreeing_weight_floor };

/// One step over a piece of one tensor: elements [first, first + count). Pointers in backend
/// memory; `x` is the task's piece (widen, lane_stats, histogram, tie_*, trim, drop) or the
/// n tasks' pieces one after the other (combine).
struct ElementwiseStep {
  ElementwiseKind kind = ElementwiseKind::widen;
  std::int64_t first = 0, count = 0;
  float* x = nullptr;

  // widen: input i (tasks 0 … n − 1, then the base) at raw + offsets[i], of types[i]; the tasks
  // into x (n × count), the base into `base`; first_bad[i] lowered to the tensor index of the
  // input's first non-finite element.
  const unsigned char* raw = nullptr;
  std::int64_t offsets[kMaxElementwiseInputs + 1] = {};
  ElemType types[kMaxElementwiseInputs + 1] = {};
  int n = 0;
  bool has_base = false, task_vectors = false;
  float* base = nullptr;
  std::uint64_t* first_bad = nullptr;

  // lane_stats: into the lanes of the tensor's blocks (block c's lane l at c · kStatLanes + l):
  // `before` (when given) Σ|x|; `after` (when given) Σ|x| over the elements the drop keeps;
  // per rule (rules > 0), `equal[r]` (per block) the elements at the threshold and `above[r]`
  // (lanes) Σ|x| of those above it (when given).
  double* before = nullptr;
  double* after = nullptr;
  int rules = 0;
  TrimRule rule[kMaxTrimRules] = {};
  std::uint64_t* equal[kMaxTrimRules] = {};
  double* above[kMaxTrimRules] = {};
  std::uint64_t seed = 0, stream = 0, limit = 0;  ///< the drop: its counter stream and limit
  /// The drop's decisions (DELLA's, a byte per element of the piece) where given: lane_stats
  /// and drop read them here instead of drawing.
  unsigned char* keep = nullptr;

  // histogram: 65536 counts of the magnitudes' high 16 bits (low_of < 0), or of the low 16
  // bits of those whose high bits are rule[low_of].high.
  std::uint64_t* histogram = nullptr;
  int low_of = -1;

  // tie_counts / tie_scan / trim: per rule, the piece's chunks' counts of ties (chunk g of the
  // piece: elements [max(first, (g0 + g) · kTieChunk), …) with g0 = first / kTieChunk), their
  // allowances, and the tensor's blocks' allowances (`left`, carried from piece to piece).
  std::int64_t* chunk_ties[kMaxTrimRules] = {};
  std::int64_t* chunk_left[kMaxTrimRules] = {};
  std::int64_t* left[kMaxTrimRules] = {};
  /// trim: rule 0's set, less rule 1's where there are two (breadcrumbs' outliers).
  double factor = 1.0;  ///< trim, drop: the kept values' rescale; scale: the factor
  bool zero_all = false;  ///< drop: nothing kept

  // combine: the tasks' thinned values in x (n × count), weights w (n, backend memory), into
  // out (count), the base (when has_base) added.
  const double* weights = nullptr;
  double weight_sum = 1.0, lambda = 1.0;
  bool elect = false, elect_by_count = false, elect_on_weighted = false;
  CombineNormalize normalize = CombineNormalize::none;
  float* out = nullptr;

  // dot_lanes: the three sums' lanes (per tensor block, as `before`); blend: s0, s1 (the base in
  // `base`, the fine-tune in x, into out); nearswap: t.
  double* sums[3] = {};
  double s0 = 0, s1 = 0, t = 0;

  // stock_lanes: the sums' lanes per block of stock_block elements (a multiple of kStatBlock
  // that grows with the number of sums, so that the lanes stay a small part of the tensor), sum
  // q's lanes at stock + q · stock_stride (the tensor's blocks × kStatLanes), the models in x
  // (n × count), the base in `base`. stock_rows: per row of `row`
  // elements (the piece holds whole rows), its t into row_t; stock_blend: into out, with t, or
  // with row_t's t of each row where row_t is given.
  double* stock = nullptr;
  std::int64_t stock_block = kStatBlock, stock_stride = 0, row = 0;
  double* row_t = nullptr;

  // della_keep: rows along the tensor's second axis, each `row` elements `inner` apart (a group
  // of row · inner elements holds `inner` rows; the piece holds whole groups), ranked by
  // magnitude, the draws into `keep` with the drop's counter stream (seed, stream).
  std::int64_t inner = 1;
  double density = 1, epsilon = 0;

  // pair_*: the two models in x (2 × count), the base in `base` where has_base; the sums into
  // sums[0 … 2] (pair_lanes: the lanes; pair_rows: per row of `row` elements of the piece;
  // pair_columns: per column of `row` columns, carried from piece to piece). pair_blend: with t,
  // each vector's coefficients {linear, c0, c1, sin θ} at coef + 4 · vector, the vector of
  // element j being 0 (pair_layout 0: the tensor), j / row (1: rows) or j mod row (2: columns).
  const double* coef = nullptr;
  int pair_layout = 0;

  // gram_*: the n tasks in x, the base in `base` where has_base: the base is the first vector
  // (karcher), or with task_vectors subtracted from each task's value in f64 and added back to
  // the blend (multislerp). gram_lanes adds into the lanes at stock (sum q at stock + q ·
  // stock_stride); gram_blend takes a coefficient per vector from coef.

  // fusion_histogram's digit (below).
  int multi_pass = 0;

  // ram_*: the n models in x, the base in `base`; a task changes an element where its value is
  // more than `epsilon` from the base's (in f64). ram_counts adds task i's shared changes into
  // counts[2i] and its unique ones into counts[2i + 1]; ram_blend scales a unique change of task
  // i by weights[i].
  std::uint64_t* counts = nullptr;

  // sce_*: the n tasks' values in x. sce_lanes by sce_pass: 0 … 3, the histogram of the
  // variances' ordered bits' digit sce_pass (bits 63 … 48 first) into `histogram`, of the
  // variances whose digits above it are `prefix`, and at pass 0 the variances that are not 0
  // counted into counts[0]; 4, the variances equal to `threshold` counted per block into
  // equal[0]; 5, each task t's Σ x² into the lanes at stock + t · stock_stride. sce_ties and
  // sce_select: chunk_ties[0], chunk_left[0] as the trim's; an element is kept where its
  // variance is above `threshold`, or equal and within its chunk's allowance (none where
  // zero_all).
  std::uint64_t prefix = 0;
  double threshold = 0;
  int sce_pass = 0;

  // fusion_*: the fine-tune in x, the base in `base`, rows of `row` elements (the piece holds
  // whole rows), each row's divergence at row_t (the piece's first row at row_t[0]);
  // fusion_histogram with multi_pass, prefix and histogram as sce_lanes' passes 0 … 3;
  // fusion_blend into out with `threshold`.
};

/// How many indices a step runs over.
REVMERGE_HD_INLINE std::int64_t piece_blocks(const ElementwiseStep& s, std::int64_t block = kStatBlock) {
  if (s.count <= 0) return 0;
  return (s.first + s.count - 1) / block - s.first / block + 1;
}
REVMERGE_HD_INLINE std::int64_t piece_chunks(const ElementwiseStep& s) {
  if (s.count <= 0) return 0;
  return (s.first + s.count - 1) / kTieChunk - s.first / kTieChunk + 1;
}
/// Gram sums of n vectors (model_stock's tasks, karcher's models): n squared norms and
/// n(n − 1)/2 dot products.
REVMERGE_HD_INLINE constexpr int stock_sums(int n) { return n * (n + 1) / 2; }
/// Sum q's vectors (a, b): a = b = q for the squared norms, then the pairs a < b in order.
/// (constexpr: the host's Gram sums fix them at compile time, sphere_sums.cpp.)
REVMERGE_HD_INLINE constexpr void stock_pair(int n, int q, int& a, int& b) {
  if (q < n) {
    a = b = q;
    return;
  }
  int p = q - n;
  for (a = 0; p >= n - 1 - a; ++a) p -= n - 1 - a;
  b = a + 1 + p;
}

/// stock_lanes takes a lane's sums this many at a time, in one index (independent chains of
/// additions, the lane's elements read once for them).
constexpr int kStockGroup = 8;
REVMERGE_HD_INLINE int stock_groups(int n) { return (stock_sums(n) + kStockGroup - 1) / kStockGroup; }

/// The vectors of a gram_* step: the n tasks, after the base where it is one of them (not
/// subtracted as task_vectors).
REVMERGE_HD_INLINE int gram_vectors(const ElementwiseStep& s) { return s.n + (s.has_base && !s.task_vectors ? 1 : 0); }

REVMERGE_HD_INLINE std::int64_t step_indices(const ElementwiseStep& s) {
  switch (s.kind) {
    case ElementwiseKind::lane_stats:
    case ElementwiseKind::dot_lanes: return piece_blocks(s) * kStatLanes;
    case ElementwiseKind::stock_lanes: return piece_blocks(s, s.stock_block) * kStatLanes * stock_groups(s.n);
    case ElementwiseKind::stock_rows:
    case ElementwiseKind::fusion_rows:
    case ElementwiseKind::pair_rows: return s.row > 0 ? s.count / s.row : 0;
    case ElementwiseKind::pair_lanes:
    case ElementwiseKind::ram_counts:
    case ElementwiseKind::sce_lanes: return piece_blocks(s) * kStatLanes;
    case ElementwiseKind::gram_lanes: return piece_blocks(s) * kStatLanes * stock_groups(gram_vectors(s));
    case ElementwiseKind::pair_columns: return s.row;
    case ElementwiseKind::tie_scan: return piece_blocks(s);
    case ElementwiseKind::tie_counts:
    case ElementwiseKind::trim:
    case ElementwiseKind::sce_ties:
    case ElementwiseKind::sce_select: return piece_chunks(s);
    default: return s.count;
  }
}

REVMERGE_HD_INLINE void widen_element(const ElementwiseStep& s, std::int64_t j) {
  const auto index = static_cast<std::uint64_t>(s.first + j);
  float b = 0.0f;
  if (s.has_base) {
    b = load_as_f32(s.raw + s.offsets[s.n], j, s.types[s.n]);
    if (!(magnitude_bits(b) < 0x7f800000u)) atomic_min_u64(s.first_bad + s.n, index);
    s.base[j] = b;
  }
  for (int t = 0; t < s.n; ++t) {
    const float v = load_as_f32(s.raw + s.offsets[t], j, s.types[t]);
    if (!(magnitude_bits(v) < 0x7f800000u)) atomic_min_u64(s.first_bad + t, index);
    s.x[t * s.count + j] = s.task_vectors ? v - b : v;
  }
}

// Lane index of the piece's blocks: lane l of block c, its first element i (≡ l mod
// kStatLanes, in the piece) and the end of the block's part of the piece; `at` its place in the
// tensor's lanes.
struct Lane {
  std::int64_t c, at, i, end;
};
REVMERGE_HD_INLINE Lane piece_lane(const ElementwiseStep& s, std::int64_t index, std::int64_t block = kStatBlock) {
  const std::int64_t c = s.first / block + index / kStatLanes, l = index % kStatLanes;
  const std::int64_t begin = c * block > s.first ? c * block : s.first;
  const std::int64_t block_end = (c + 1) * block, piece_end = s.first + s.count;
  return {c, c * kStatLanes + l, begin + ((l - begin % kStatLanes) + kStatLanes) % kStatLanes,
          block_end < piece_end ? block_end : piece_end};
}

/// A block's lanes added in a fixed tree.
REVMERGE_HD_INLINE double block_lanes_sum(const double* v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

/// The sum of `blocks` blocks' lanes: each block's tree, added in block order.
REVMERGE_HD_INLINE double lanes_total(const double* lanes, std::int64_t blocks) {
  double s = 0;
  for (std::int64_t c = 0; c < blocks; ++c) s += block_lanes_sum(lanes + c * kStatLanes);
  return s;
}

// The piece's elements of tie chunk g: [begin, end).
REVMERGE_HD_INLINE void chunk_range(const ElementwiseStep& s, std::int64_t g, std::int64_t& begin,
                                    std::int64_t& end) {
  const std::int64_t c = s.first / kTieChunk + g;
  begin = c * kTieChunk > s.first ? c * kTieChunk : s.first;
  end = (c + 1) * kTieChunk < s.first + s.count ? (c + 1) * kTieChunk : s.first + s.count;
}

}  // namespace revmerge::kernels
