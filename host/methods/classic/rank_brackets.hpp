#pragma once
// RankSelect's sampled passes (rank_select.hpp): a first pass keeps a sample of the values' keys
// (kernels::ordered_bits), each rank is bracketed by two sample values, and a second pass counts
// the values below and at each bracket's ends and keeps those strictly inside, among which the
// rank's value is picked. The sample is one value in `stride` (one at a place fixed by a hash in
// each group of `stride` consecutive values, so that a tensor's columns or rows are not favoured),
// or every value of a small tensor. The brackets lie 8 standard deviations of a rank's place in
// the sample (plus 8) either side of it, so a bracket that misses its rank means a sample unlike
// the whole by more than that; RankSelect then goes on with radix passes, and the values are
// exact either way.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/elementwise.hpp"

namespace revmerge {

/// A bracketed selection holds at most this many ranks (a flag bit each).
inline constexpr std::size_t kMostBracketRanks = 8;

/// Whether a selection of `ranks` ranks over `numel` values is sampled, one value in `stride`
/// (1: all), into a sample of at most `size` keys; off where the brackets' values could exceed
/// `keep_limit` (RankSelect::keep_limit) or the sample 4 Mi keys.
struct SamplePlan {
  bool on = false;
  std::int64_t stride = 0;
  std::int64_t size = 0;
};
SamplePlan sample_plan(std::int64_t numel, std::size_t ranks, std::int64_t keep_limit);

/// The places in [first, first + count) of the values a pass sampled one in `stride` takes (a
/// power of two): one in each group of `stride` consecutive places, at kernels::mix64(group)
/// modulo `stride`.
void sampled_places(std::int64_t first, std::int64_t count, std::int64_t stride, std::vector<std::int64_t>& places);

/// A rank's bracket [lo, hi] of keys, and how many of a pass's values the sample says lie
/// strictly inside it.
struct Bracket {
  std::uint64_t lo = 0, hi = 0;
  std::int64_t expected_inside = 0;
};
/// The brackets of `ranks` (each in [0, numel)) from the sample of a pass of `numel` values
/// sampled one in `stride` (its keys, in any order; partly reordered here).
std::vector<Bracket> brackets_from_sample(std::vector<std::uint64_t>& sample,
                                          const std::vector<std::int64_t>& ranks,
                                          std::int64_t numel, std::int64_t stride);

/// A bracket pass's counts per rank: below lo, at lo, at hi (when hi ≠ lo), and (per block) how
/// many keys strictly inside were written to inside[r].
struct BracketCounts {
  std::int64_t below[kMostBracketRanks] = {}, at_lo[kMostBracketRanks] = {},
               at_hi[kMostBracketRanks] = {};
  std::int64_t inside[kMostBracketRanks] = {};
};

/// One block of a bracket pass: the keys of v[0, n) into `keys` (room for n), the counts added
/// into `counts`, and rank r's keys strictly inside its bracket written to inside[r] (room for n
/// each; counts.inside[r] says how many). `flags`: room for n bytes.
void bracket_block(const double* v, std::int64_t n, const Bracket* brackets, std::size_t ranks,
                   std::uint64_t* keys, std::uint8_t* flags, std::uint64_t* const* inside,
                   BracketCounts& counts);

}  // namespace revmerge
