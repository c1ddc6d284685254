#include "methods/classic/rank_brackets.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "kernels/counter_rng.hpp"

namespace revmerge {

using i64 = std::int64_t;

namespace {

constexpr i64 kSampleAll = i64{1} << 18;   // at most this many values: the sample is all of them
constexpr i64 kSampleSize = i64{1} << 17;  // the sample's size at least, once strided
constexpr i64 kMostStride = 64;
constexpr i64 kMostSample = i64{1} << 22;  // 32 MiB of keys
constexpr double kDeviations = 8;          // a bracket's half-width, in standard deviations

// A rank's bracket in the sample: its place ±(8 standard deviations of a binomial count + 8).
struct Places {
  i64 lo, hi;  // may fall outside [0, m): the bracket is then open at that end
};
Places bracket_places(i64 rank, i64 numel, i64 m) {
  const double f = (static_cast<double>(rank) + 0.5) / static_cast<double>(numel);
  const double centre = f * static_cast<double>(m);
  const double d = kDeviations * std::sqrt(static_cast<double>(m) * f * (1 - f)) + 8;
  return {static_cast<i64>(std::floor(centre - d)), static_cast<i64>(std::ceil(centre + d))};
}

}  // namespace

SamplePlan sample_plan(i64 numel, std::size_t ranks, i64 keep_limit) {
  if (ranks == 0 || ranks > kMostBracketRanks || numel <= 0) return {};
  if (numel <= kSampleAll) return {true, 1, numel};
  i64 stride = 1;
  while (stride < kMostStride && numel / (stride * 2) >= kSampleSize) stride *= 2;
  const i64 m = numel / stride + 1;
  if (m > kMostSample) return {};
  // The brackets' values expected inside, widest where f(1 − f) = 1/4, against what may be kept.
  const double per_rank = (2 * (kDeviations * std::sqrt(static_cast<double>(m) / 4) + 8) + 2) *
                          static_cast<double>(stride);
  if (static_cast<double>(ranks) * (1.25 * per_rank + 4096) > static_cast<double>(keep_limit))
    return {};
  return {true, stride, m};
}

void sampled_places(i64 first, i64 count, i64 stride, std::vector<i64>& places) {
  places.clear();
  const i64 end = first + count;
  const auto mask = static_cast<std::uint64_t>(stride - 1);
  for (i64 group = first / stride; group * stride < end; ++group) {
    const i64 g = group * stride + static_cast<i64>(kernels::mix64(static_cast<std::uint64_t>(group)) & mask);
    if (g >= first && g < end) places.push_back(g);
  }
}

std::vector<Bracket> brackets_from_sample(std::vector<std::uint64_t>& sample,
                                          const std::vector<i64>& ranks, i64 numel, i64 stride) {
  const i64 m = static_cast<i64>(sample.size());
  std::vector<Bracket> out(ranks.size());
  if (m == 0) {
    for (auto& b : out) b.hi = ~std::uint64_t{0}, b.expected_inside = numel;
    return out;
  }
  // The brackets' places in the sample, put in order by a selection each (ascending, each
  // within what the last left above it) instead of a sort: O(m) a place.
  std::vector<i64> places;
  for (const i64 rank : ranks) {
    const auto p = bracket_places(rank, numel, m);
    if (p.lo >= 0) places.push_back(std::min(p.lo, m - 1));
    if (p.hi < m) places.push_back(std::max<i64>(p.hi, 0));
  }
  std::sort(places.begin(), places.end());
  places.erase(std::unique(places.begin(), places.end()), places.end());
  auto from = sample.begin();
  for (const i64 place : places) {
    const auto at = sample.begin() + place;
    std::nth_element(from, at, sample.end());
    from = at + 1;
  }
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    const auto p = bracket_places(ranks[r], numel, m);
    const i64 lo = std::clamp<i64>(p.lo, 0, m - 1), hi = std::clamp<i64>(p.hi, 0, m - 1);
    auto& b = out[r];
    b.lo = p.lo < 0 ? 0 : sample[static_cast<std::size_t>(lo)];
    b.hi = p.hi >= m ? ~std::uint64_t{0} : sample[static_cast<std::size_t>(hi)];
    // The sample's values strictly inside, each standing for `stride` values of the pass: all
    // between the two places (the selections left none below lo's place above it, none above
    // hi's below it), or beyond a place the bracket leaves open.
    const auto first = sample.begin() + (p.lo < 0 ? 0 : lo + 1), last = p.hi >= m ? sample.end() : sample.begin() + hi;
    const auto inside =
        first < last ? std::count_if(first, last, [&](std::uint64_t k) { return k > b.lo && k < b.hi; }) : 0;
    b.expected_inside = static_cast<i64>(inside) * stride;
  }
  return out;
}

// Compiled again for AVX2 and AVX-512 where the CPU has them: the keys (kernels::ordered_bits,
// branch-free) and the brackets' comparisons on vector lanes (64-bit unsigned comparisons), the
// rare values inside found afterwards eight flags at a time.
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void bracket_block(const double* v, i64 n, const Bracket* brackets, std::size_t ranks, std::uint64_t* keys,
                   std::uint8_t* flags, std::uint64_t* const* inside, BracketCounts& counts) {
  for (std::size_t r = 0; r < ranks; ++r) counts.inside[r] = 0;
  if (n <= 0) return;
  for (i64 j = 0; j < n; ++j) keys[j] = kernels::ordered_bits(v[j]);
  std::memset(flags, 0, static_cast<std::size_t>(n));
  for (std::size_t r = 0; r < ranks; ++r) {
    const std::uint64_t lo = brackets[r].lo, hi = brackets[r].hi;
    const auto bit = static_cast<std::uint8_t>(1u << r);
    i64 below = 0, at_lo = 0, at_hi = 0;
    for (i64 j = 0; j < n; ++j) {
      const std::uint64_t k = keys[j];
      below += k < lo;
      at_lo += k == lo;
      at_hi += k == hi;
      flags[j] |= static_cast<std::uint8_t>((k > lo) & (k < hi)) * bit;
    }
    counts.below[r] += below;
    counts.at_lo[r] += at_lo;
    counts.at_hi[r] += lo == hi ? 0 : at_hi;  // one value at both ends: counted once, as lo
  }
  // The flagged values, eight flags a word: most words are 0 (a rank's bracket holds ~0.5 % of
  // the values), the others walked by their set bytes.
  const auto keep = [&](i64 j) {
    for (unsigned f = flags[j]; f != 0; f &= f - 1) {
      const auto r = static_cast<std::size_t>(std::countr_zero(f));
      inside[r][counts.inside[r]++] = keys[j];
    }
  };
  i64 j = 0;
  for (; j + 8 <= n; j += 8) {
    std::uint64_t word;
    std::memcpy(&word, flags + j, 8);
    while (word != 0) {
      const int byte = std::countr_zero(word) / 8;
      keep(j + byte);
      word &= ~(std::uint64_t{0xff} << (8 * byte));
    }
  }
  for (; j < n; ++j) keep(j);
}

}  // namespace revmerge
