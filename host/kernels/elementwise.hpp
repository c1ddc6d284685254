#pragma once
// The element-wise classic merges (task arithmetic, TIES, DARE, breadcrumbs, …) one piece of a
// tensor at a time, for the host and the device alike. A step is a loop over independent
// indices — elements, chunks of elements, or a statistics block's lanes — each index one call
// of the step's routine; a backend runs the indices in any order and on any number of threads.
// Every sum is taken in a fixed order inside one index (a lane of a block, in index order;
// a task loop, in task order), and everything shared between indices is an integer (counts,
// the smallest index), so the results are the same bits on every backend — and the bits of the
// CPU's own merge (methods/classic/sparsify.cpp, combine.cpp), which keeps its statistics per
// the same blocks and lanes.
#include <cmath>
#include <cstdint>

#ifndef __CUDA_ARCH__
#include <atomic>
#endif

#include "kernels/counter_rng.hpp"
#include "kernels/exp_log.hpp"
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
  /// Per lane of a statistics block: one of multislerp's four passes' sums (multi_pass 0: each
  /// model's Σv²; 1: Σm² of the directions' weighted mean m; 2: each direction's Σ u·m/‖m‖;
  /// 3: Σt² of the weighted tangent t).
  multislerp_lanes,
  /// Per element: multislerp's map back, the base added back.
  multislerp_blend,
  /// Per lane of a statistics block: one of karcher's passes' sums (multi_pass 0: each model's
  /// Σ x²; 1: Σ m² of the first mean; 2: each direction's Σ m·u; 3: Σ t² of the tangent; 4: Σ of
  /// the moved mean's squares), each element's mean replayed from the table's steps.
  karcher_lanes,
  /// Per element: karcher's mean after the table's steps, scaled by the mean norm.
  karcher_blend,
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

  // multislerp_*: the n models in x, the base where has_base; `weights` (n), and from the passes
  // before: the models' norms (n), eps, the mean's norm, each direction's dot with the mean
  // (`dots`, n). multislerp_lanes into the lanes at stock (sum q at stock + q · stock_stride);
  // multislerp_blend: (m · s0 + t · s1) · factor (s0 = cos ‖t‖, s1 = sin ‖t‖ / ‖t‖, factor the
  // weighted mean norm), or w0 a + w1 b where `degenerate`, or the one model's values (n = 1).
  const double* norms = nullptr;
  const double* dots = nullptr;
  double eps = 0, mean_norm = 0;
  int multi_pass = 0;
  bool degenerate = false;

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
/// model_stock's sums for n tasks: n squared norms and n(n − 1)/2 dot products.
REVMERGE_HD_INLINE int stock_sums(int n) { return n * (n + 1) / 2; }
/// stock_lanes takes a lane's sums this many at a time, in one index (independent chains of
/// additions, the lane's elements read once for them).
constexpr int kStockGroup = 8;
REVMERGE_HD_INLINE int stock_groups(int n) { return (stock_sums(n) + kStockGroup - 1) / kStockGroup; }

REVMERGE_HD_INLINE std::int64_t step_indices(const ElementwiseStep& s) {
  switch (s.kind) {
    case ElementwiseKind::lane_stats:
    case ElementwiseKind::dot_lanes: return piece_blocks(s) * kStatLanes;
    case ElementwiseKind::stock_lanes: return piece_blocks(s, s.stock_block) * kStatLanes * stock_groups(s.n);
    case ElementwiseKind::stock_rows:
    case ElementwiseKind::fusion_rows:
    case ElementwiseKind::pair_rows: return s.row > 0 ? s.count / s.row : 0;
    case ElementwiseKind::pair_lanes:
    case ElementwiseKind::multislerp_lanes:
    case ElementwiseKind::ram_counts:
    case ElementwiseKind::sce_lanes:
    case ElementwiseKind::karcher_lanes: return piece_blocks(s) * kStatLanes;
    case ElementwiseKind::pair_columns: return s.row;
    case ElementwiseKind::tie_scan: return piece_blocks(s);
    case ElementwiseKind::tie_counts:
    case ElementwiseKind::trim:
    case ElementwiseKind::sce_ties:
    case ElementwiseKind::sce_select: return piece_chunks(s);
    default: return s.count;
  }
}

// ---- the steps' routines, one index each ----

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

// The piece's elements of tie chunk g: [begin, end).
REVMERGE_HD_INLINE void chunk_range(const ElementwiseStep& s, std::int64_t g, std::int64_t& begin,
                                    std::int64_t& end) {
  const std::int64_t c = s.first / kTieChunk + g;
  begin = c * kTieChunk > s.first ? c * kTieChunk : s.first;
  end = (c + 1) * kTieChunk < s.first + s.count ? (c + 1) * kTieChunk : s.first + s.count;
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

/// Sum q's tasks (a, b): a = b = q for the squared norms, then the pairs a < b in order.
REVMERGE_HD_INLINE void stock_pair(int n, int q, int& a, int& b) {
  if (q < n) {
    a = b = q;
    return;
  }
  int p = q - n;
  for (a = 0; p >= n - 1 - a; ++a) p -= n - 1 - a;
  b = a + 1 + p;
}

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

/// A double's bits in an order that is the values' order (positive above negative).
REVMERGE_HD_INLINE std::uint64_t ordered_bits(double v) {
  std::uint64_t b;
  memcpy(&b, &v, 8);
  return b >> 63 ? ~b : b | (std::uint64_t{1} << 63);
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

/// KL(softmax(w) ‖ softmax(b)) over one row of `row` elements, 1e-8 added to every probability
/// of both softmaxes; each max, sum and the divergence in index order. exp and log are
/// exp_f64 and log_f64, so the host and a GPU give the same bits (a GPU thread holds no row of
/// probabilities: they are formed again from the sums).
REVMERGE_HD_INLINE double fusion_row_kl(const float* w, const float* b, std::int64_t row) {
  float top_w = w[0], top_b = b[0];
  for (std::int64_t j = 1; j < row; ++j) {
    if (w[j] > top_w) top_w = w[j];
    if (b[j] > top_b) top_b = b[j];
  }
  double sum_w = 0, sum_b = 0;
  for (std::int64_t j = 0; j < row; ++j) {
    sum_w += exp_f64(static_cast<double>(w[j]) - top_w);
    sum_b += exp_f64(static_cast<double>(b[j]) - top_b);
  }
  double kl = 0;
  for (std::int64_t j = 0; j < row; ++j) {
    const double p = exp_f64(static_cast<double>(w[j]) - top_w) / sum_w + 1e-8;
    const double q = exp_f64(static_cast<double>(b[j]) - top_b) / sum_b + 1e-8;
    kl += p * log_f64(p / q);
  }
  return kl;
}

/// An element's importance: |w − b| in f64 times its row's divergence.
REVMERGE_HD_INLINE double fusion_importance(float w, float b, double kl) {
  const double d = static_cast<double>(w) - b;
  return (d < 0 ? -d : d) * kl;
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

REVMERGE_HD_INLINE void scale_element(const ElementwiseStep& s, std::int64_t j) {
  s.out[j] = rescaled(s.x[j], s.factor);
}

REVMERGE_HD_INLINE void stock_blend(const ElementwiseStep& s, std::int64_t j) {
  double mean = 0;
  for (int t = 0; t < s.n; ++t) mean += stock_delta(s, t, j);
  const double t = s.row_t ? s.row_t[j / s.row] : s.t;
  s.out[j] = static_cast<float>(s.base[j] + t * (mean / static_cast<double>(s.n)));
}

/// Every step kind with its routine, listed once: X(kind, routine).
#define REVMERGE_ELEMENTWISE_KINDS(X) \
  X(widen, widen_element) \
  X(lane_stats, lane_stats) \
  X(histogram, histogram_element) \
  X(tie_counts, tie_counts) \
  X(tie_scan, tie_scan) \
  X(trim, trim_chunk) \
  X(drop, drop_element) \
  X(della_keep, della_keep_element) \
  X(combine, combine_element) \
  X(dot_lanes, dot_lanes) \
  X(blend, blend_element) \
  X(nearswap, nearswap_element) \
  X(stock_lanes, stock_lane) \
  X(stock_rows, stock_row) \
  X(stock_blend, stock_blend) \
  X(scale, scale_element) \
  X(pair_lanes, pair_lane) \
  X(pair_rows, pair_row) \
  X(pair_columns, pair_column) \
  X(pair_blend, pair_blend) \
  X(multislerp_lanes, multislerp_lane) \
  X(multislerp_blend, multislerp_blend) \
  X(karcher_lanes, karcher_lane) \
  X(karcher_blend, karcher_blend) \
  X(sce_lanes, sce_lane) \
  X(sce_ties, sce_ties) \
  X(sce_select, sce_select) \
  X(ram_counts, ram_counts) \
  X(ram_blend, ram_blend) \
  X(fusion_rows, fusion_row) \
  X(fusion_histogram, fusion_histogram) \
  X(fusion_blend, fusion_blend)

/// One index of a step of kind K.
template <ElementwiseKind K>
REVMERGE_HD_INLINE void elementwise_index_of(const ElementwiseStep& s, std::int64_t i) {
#define REVMERGE_ELEMENTWISE_IF(kind, routine) \
  if constexpr (K == ElementwiseKind::kind) routine(s, i);
  REVMERGE_ELEMENTWISE_KINDS(REVMERGE_ELEMENTWISE_IF)
#undef REVMERGE_ELEMENTWISE_IF
}

/// One index of any step (a backend's loop body).
REVMERGE_HD_INLINE void elementwise_index(const ElementwiseStep& s, std::int64_t i) {
  switch (s.kind) {
#define REVMERGE_ELEMENTWISE_CASE(kind, routine) \
  case ElementwiseKind::kind: routine(s, i); break;
    REVMERGE_ELEMENTWISE_KINDS(REVMERGE_ELEMENTWISE_CASE)
#undef REVMERGE_ELEMENTWISE_CASE
  }
}

/// The steps' loop body as a function object (Thrust's for_each on the device).
struct ElementwiseIndices {
  ElementwiseStep step;
  REVMERGE_HD void operator()(std::int64_t i) const { elementwise_index(step, i); }
};

/// The loop body of a step of kind K: the kind decided once per step, not per index, so that
/// the host's compiler inlines the routine into its loop.
template <ElementwiseKind K>
struct ElementwiseKindIndices {
  ElementwiseStep step;
  REVMERGE_HD void operator()(std::int64_t i) const { elementwise_index_of<K>(step, i); }
};

/// run(body) with the loop body of `step`'s kind (a host loop's dispatch).
template <class Run>
void with_elementwise_body(const ElementwiseStep& step, Run&& run) {
  switch (step.kind) {
#define REVMERGE_ELEMENTWISE_BODY(kind, routine) \
  case ElementwiseKind::kind: run(ElementwiseKindIndices<ElementwiseKind::kind>{step}); break;
    REVMERGE_ELEMENTWISE_KINDS(REVMERGE_ELEMENTWISE_BODY)
#undef REVMERGE_ELEMENTWISE_BODY
  }
}

}  // namespace revmerge::kernels
