#pragma once
// The loops of one task's thinning, which Thinning (thinning.hpp, sparsify.cpp) runs over the
// pieces of a tensor: histograms of the magnitudes' bits, Σ|x| in a statistics block's lanes,
// the trims walking their ties in index order, DARE's counter draws. The hot ones are compiled
// again for AVX2 and AVX-512 (integer arithmetic, and the same additions in the same order per
// lane: the same bits on every machine).
#include <bit>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/counter_rng.hpp"
#include "kernels/elementwise.hpp"
#include "methods/classic/for_blocks.hpp"

namespace revmerge::thinning_loops {

using i64 = std::int64_t;

// Statistics are kept per block of this many elements of the tensor, each block's sum taken in
// index order (carried from piece to piece), the blocks' sums added in order: results do not
// depend on the piece sizes or the thread count. A block's Σ|x| is kept in kLanes interleaved
// lanes (element i in lane i mod kLanes, each lane in index order), added in a fixed tree at the
// end: the additions run side by side instead of one chain of dependent adds.
// The blocks and lanes are kernels/elementwise.hpp's: a backend gathers the same sums.
constexpr i64 kBlock = kernels::kStatBlock;
constexpr i64 kLanes = kernels::kStatLanes;

inline i64 block_count(i64 count) { return (count + kBlock - 1) / kBlock; }

/// for_blocks.hpp's loop over the statistics blocks.
template <class F>
void for_blocks(i64 first, i64 size, int threads, const F& f) {
  revmerge::for_blocks(first, size, kBlock, threads, f);
}

/// DARE's decisions are drawn this many at a time into a buffer, by draw_keeps.
constexpr i64 kDraws = 512;

/// For elements [b, e) of a block: term(i, l) adds element i's terms to lane l (= i mod kLanes)
/// of the caller's accumulators, elements of a lane in index order; a whole row of lanes at a
/// time where it can, so the compiler keeps them in registers.
template <class Term>
void in_lanes(i64 b, i64 e, Term term) {
  i64 i = b;
  for (; i < e && i % kLanes != 0; ++i) term(i, i % kLanes);
  for (; i + kLanes <= e; i += kLanes)
    for (i64 l = 0; l < kLanes; ++l) term(i + l, l);
  for (; i < e; ++i) term(i, i % kLanes);
}

/// v where `keep`, else +0 (by a mask, not a branch).
inline double kept_or_zero(bool keep, double v) {
  return std::bit_cast<double>(std::bit_cast<std::uint64_t>(v) &
                               (std::uint64_t{0} - static_cast<std::uint64_t>(keep)));
}

/// A trim rule as trim_run walks it: a trivial one keeps all (`all`) or nothing without looking.
struct TrimRule {
  bool trivial = false, all = false;
  std::uint32_t threshold = 0;
};

/// Adds to `counts` (65536 of them) the histogram of 16 bits of the magnitudes (`shift` 16: the
/// high half; 0: the low half of those whose high half is `high`), on the calling thread. The low
/// half's few elements are found 16 at a time by a vectorised test (compiled again for AVX2 and
/// AVX-512): most stretches hold none.
void count_bits(i64* counts, const float* x, i64 m, int shift, std::uint32_t high,
                std::uint64_t first = 0, std::uint64_t* at = nullptr, i64 at_size = 0,
                i64* at_used = nullptr);
void count_bits(i64* counts, std::span<const float> x, int shift, std::uint32_t high);

/// The same into `total`, counted per thread.
void add_histogram(std::vector<i64>& total, std::span<const float> x, int shift, std::uint32_t high,
                   int threads);

/// Σ|x| of a piece into the blocks' lanes (kLanes per block).
void add_abs(std::vector<double>& lanes, i64 first, std::span<const float> x, int threads);

/// The blocks' sums (each its lanes' fixed tree), added in block order.
double total(const std::vector<double>& lanes);

/// The trims over `m` elements of one block in index order (`left`: how many of each rule's ties
/// in the block are still inside): kept where inside `outer` and not inside `dropped` (null: no
/// such rule), rescaled by `factor`; else +0 — inside()'s decisions, one comparison per element
/// except in the one stretch per rule where its ties run out, which is walked one at a time.
void trim_run(float* x, i64 m, const TrimRule& outer, i64& left, const TrimRule* dropped,
              i64& left_dropped, double factor);

/// keep[j] = whether element first + j is kept (its counter draw below `limit`), j < count. One
/// loop of independent draws, compiled again for AVX2 and AVX-512 where the CPU has them (the
/// draws are integer arithmetic: the same bits everywhere).
void draw_keeps(const kernels::CounterThreshold& draw, std::uint64_t limit, i64 first, i64 count,
                unsigned char* keep);

/// keep[j] = whether element first + j is kept, its draw below limits[j] (DELLA's, one a rank),
/// j < count: draw_keeps with a limit for each element.
void draw_keeps_each(const kernels::CounterThreshold& draw, const std::uint64_t* limits, i64 first, i64 count,
                     unsigned char* keep);

/// Elements [s, t) of a block: Σ|x| into its lanes `before` and, of those `keeps[i − s]` keeps,
/// into `after` (kLanes each, every lane in index order); with `words` (a whole tensor: s on a
/// word, as its blocks and runs start) the decisions also go into its bit words — no two threads
/// write one. `x` starts at element s. Compiled again for AVX2 and AVX-512 where the CPU has them:
/// the same additions in the same order per lane, so the same bits on every machine.
void add_kept_norms(const float* x, const unsigned char* keeps, i64 s, i64 t, double* before,
                    double* after, std::uint64_t* words);

/// A run's DARE norms over elements [s, t) of a block (`x` from element s), each element drawn as
/// it is summed: add_kept_norms' sums (the same bits) without a buffer of decisions between the
/// draws and the sums, eight draws and lanes as one vector per row of lanes.
void add_drawn_norms(const kernels::CounterThreshold& draw, std::uint64_t limit, const float* x,
                     i64 s, i64 t, double* before, double* after);

/// DARE's drop over `count` elements at element `first` (x from it), each drawn as it is thinned:
/// kept ones rescaled (kernels' rescaled), dropped ones +0 (kernels' drop_element, the same bits).
void drop_drawn(const kernels::CounterThreshold& draw, std::uint64_t limit, double factor, float* x,
                i64 first, i64 count);

}  // namespace revmerge::thinning_loops
