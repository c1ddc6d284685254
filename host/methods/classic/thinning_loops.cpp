// The loops of one task's thinning (thinning_loops.hpp).
#include "methods/classic/thinning_loops.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <optional>

#include "methods/classic/lanes8.hpp"

namespace revmerge::thinning_loops {

using kernels::kept_or_zero;
using kernels::magnitude_bits;

#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void count_bits(i64* counts, const float* x, i64 m, int shift, std::uint32_t high, std::uint64_t first,
                std::uint64_t* at, i64 at_size, i64* at_used) {
  if (shift == 16) {
    for (i64 j = 0; j < m; ++j) ++counts[magnitude_bits(x[j]) >> 16];
    return;
  }
  // With `at`, each element counted is also kept as (index << 16 | low bits) at the next of
  // at_size places (taken atomically: runs on other threads keep theirs at once).
  const auto add = [&](i64 j) {
    const std::uint32_t b = magnitude_bits(x[j]);
    if ((b >> 16) != high) return;
    ++counts[b & 0xffffu];
    if (!at) return;
    const i64 place = std::atomic_ref<i64>(*at_used).fetch_add(1, std::memory_order_relaxed);
    if (place < at_size) at[place] = (first + static_cast<std::uint64_t>(j)) << 16 | (b & 0xffffu);
  };
  constexpr i64 kScan = 16;
  i64 j = 0;
  for (; j + kScan <= m; j += kScan) {
    bool any = false;
    for (i64 l = 0; l < kScan; ++l) any |= (magnitude_bits(x[j + l]) >> 16) == high;
    if (any)
      for (i64 l = 0; l < kScan; ++l) add(j + l);
  }
  for (; j < m; ++j) add(j);
}

void count_bits(i64* counts, std::span<const float> x, int shift, std::uint32_t high) {
  count_bits(counts, x.data(), static_cast<i64>(x.size()), shift, high);
}

void add_histogram(std::vector<i64>& total, std::span<const float> x, int shift, std::uint32_t high,
                   int threads) {
  const i64 count = static_cast<i64>(x.size());
  if (count < kBlock || threads <= 1) {  // a small piece: straight into the total
    count_bits(total.data(), x, shift, high);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    std::vector<i64> local(65536, 0);
    const i64 t = omp_get_thread_num(), nt = omp_get_num_threads();
    count_bits(local.data(), x.data() + count * t / nt, count * (t + 1) / nt - count * t / nt,
               shift, high);
#pragma omp critical
    for (std::size_t j = 0; j < total.size(); ++j) total[j] += local[j];
  }
}

void add_abs(std::vector<double>& lanes, i64 first, std::span<const float> x, int threads) {
  for_blocks(first, static_cast<i64>(x.size()), threads, [&](i64 c, i64 b, i64 e) {
    double acc[kLanes];
    std::copy_n(lanes.begin() + c * kLanes, kLanes, acc);
    in_lanes(b, e, [&](i64 i, i64 l) { acc[l] += std::fabs(x[i - first]); });
    std::copy_n(acc, kLanes, lanes.begin() + c * kLanes);
  });
}

double total(const std::vector<double>& lanes) {
  return kernels::lanes_total(lanes.data(), static_cast<i64>(lanes.size()) / kLanes);
}

namespace {

// Whether a value is in a rule's set, walking its block in index order (`left`: how many of
// the block's elements at the threshold are still inside). Branch-free: which elements are
// kept is as unpredictable as the data.
bool inside(bool trivial, i64 k, std::uint32_t threshold, float v, i64& left) {
  if (trivial) return k > 0;
  const std::uint32_t b = magnitude_bits(v);
  const bool at = (b == threshold) & (left > 0);
  left -= at;
  return (b > threshold) | at;
}

// Elements whose magnitude bits are `min_inside` or more are inside a rule over a stretch of a
// block where the rule's walk over its ties decides nothing one at a time: all of the stretch's
// ties are inside (`left` covers them) or none is (`left` is 0). 0x80000000 is above every
// magnitude's bits: nothing inside. nullopt: the stretch where the rule's ties run out.
std::optional<std::uint32_t> min_inside(const TrimRule& r, const float* x, i64 m, i64& left) {
  constexpr std::uint32_t kNone = 0x80000000u;
  if (r.trivial) return r.all ? 0u : kNone;
  if (left == 0) return r.threshold + 1;  // ≤ kNone: the threshold is a magnitude's bits
  i64 ties = 0;
  for (i64 j = 0; j < m; ++j) ties += magnitude_bits(x[j]) == r.threshold;
  if (left < ties) return std::nullopt;
  left -= ties;
  return r.threshold;
}

// Kept where the magnitude bits are in [lo, hi), rescaled by `factor`; else +0. One comparison
// per element, vectorised; compiled again for AVX2 and AVX-512 (integer comparisons and the
// kernels' rescale: the same bits everywhere).
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void keep_between(float* x, i64 m, std::uint32_t lo, std::uint32_t hi, double factor) {
  const auto kept = [&](float v) {
    const std::uint32_t b = magnitude_bits(v);
    return (b >= lo) & (b < hi);
  };
  if (factor == 1.0) {
    for (i64 j = 0; j < m; ++j) x[j] = kernels::kept_or_zero(kept(x[j]), x[j]);
  } else {
    for (i64 j = 0; j < m; ++j)
      x[j] = kernels::kept_or_zero(kept(x[j]), static_cast<float>(x[j] * factor));
  }
}

}  // namespace

void trim_run(float* x, i64 m, const TrimRule& outer, i64& left, const TrimRule* dropped,
              i64& left_dropped, double factor) {
  i64 outer_left = left, dropped_left = left_dropped;
  const auto lo = min_inside(outer, x, m, outer_left);
  const auto hi = dropped ? min_inside(*dropped, x, m, dropped_left)
                          : std::optional<std::uint32_t>(0x80000000u);
  if (lo && hi) {
    keep_between(x, m, *lo, *hi, factor);
    left = outer_left;
    left_dropped = dropped_left;
    return;
  }
  for (i64 j = 0; j < m; ++j) {
    const bool in = inside(outer.trivial, outer.all, outer.threshold, x[j], left);
    const bool out =
        dropped && inside(dropped->trivial, dropped->all, dropped->threshold, x[j], left_dropped);
    x[j] = kept_or_zero(in & !out, kernels::rescaled(x[j], factor));
  }
}

#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void draw_keeps(const kernels::CounterThreshold& draw, std::uint64_t limit, i64 first, i64 count,
                unsigned char* keep) {
  const auto at = static_cast<std::uint64_t>(first);
  for (i64 j = 0; j < count; ++j) keep[j] = draw.below(at + static_cast<std::uint64_t>(j), limit);
}

#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void draw_keeps_each(const kernels::CounterThreshold& draw, const std::uint64_t* limits, i64 first, i64 count,
                     unsigned char* keep) {
  const auto at = static_cast<std::uint64_t>(first);
  for (i64 j = 0; j < count; ++j) keep[j] = draw.below(at + static_cast<std::uint64_t>(j), limits[j]);
}

#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void add_kept_norms(const float* x, const unsigned char* keeps, i64 s, i64 t, double* before, double* after,
                    std::uint64_t* words) {
  // Element i: its |x| into lane l of `bl` and `al`; whether it is kept.
  const auto one = [&](i64 i, i64 l, double* bl, double* al) {
    const double v = std::fabs(x[i - s]);
    const bool keep = keeps[i - s] != 0;
    bl[l] += v;
    al[l] += kept_or_zero(keep, v);
    return keep;
  };
  const auto bit = [&](i64 i, bool keep) {
    const auto u = static_cast<std::uint64_t>(i);
    words[u / 64] |= static_cast<std::uint64_t>(keep) << (u % 64);
  };
  i64 i = s;
  for (; i < t && i % kLanes != 0; ++i) {  // a piece that starts inside a row of lanes
    const bool keep = one(i, i % kLanes, before, after);
    if (words) bit(i, keep);
  }
  // Rows of lanes with the lanes in registers; a whole tensor's decisions a word at a time.
  double bl[kLanes], al[kLanes];
  std::copy_n(before, kLanes, bl);
  std::copy_n(after, kLanes, al);
  if (words) {
    for (; i + 64 <= t; i += 64) {
      std::uint64_t word = 0;
      for (i64 j = 0; j < 64; j += kLanes)
        for (i64 l = 0; l < kLanes; ++l)
          word |= static_cast<std::uint64_t>(one(i + j + l, l, bl, al)) << (j + l);
      words[static_cast<std::uint64_t>(i) / 64] = word;
    }
  }
  for (; i + kLanes <= t; i += kLanes)
    for (i64 l = 0; l < kLanes; ++l) {
      const bool keep = one(i + l, l, bl, al);
      if (words) bit(i + l, keep);
    }
  std::copy_n(bl, kLanes, before);
  std::copy_n(al, kLanes, after);
  for (; i < t; ++i) {
    const bool keep = one(i, i % kLanes, before, after);
    if (words) bit(i, keep);
  }
}

namespace {

// Eight elements as one vector of each kind (GCC's vector types; the statistics' lanes; Lanes
// and Floats from lanes8.hpp).
static_assert(kLanes == 8);
using Words = std::uint64_t __attribute__((vector_size(kLanes * sizeof(std::uint64_t))));
using FloatBits = std::uint32_t __attribute__((vector_size(kLanes * sizeof(std::uint32_t))));
constexpr Words kLaneIndex = {0, 1, 2, 3, 4, 5, 6, 7};

}  // namespace

#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void add_drawn_norms(const kernels::CounterThreshold& draw, std::uint64_t limit, const float* x, i64 s, i64 t,
                     double* before, double* after) {
  const auto one = [&](i64 i) {
    const double v = std::fabs(x[i - s]);
    before[i % kLanes] += v;
    after[i % kLanes] += kept_or_zero(draw.below(static_cast<std::uint64_t>(i), limit), v);
  };
  i64 i = s;
  for (; i < t && i % kLanes != 0; ++i) one(i);
  Lanes b, a;
  std::memcpy(&b, before, sizeof b);
  std::memcpy(&a, after, sizeof a);
  const Words magnitude = Words{} + ~(std::uint64_t{1} << 63);
  for (; i + kLanes <= t; i += kLanes) {
    Floats f;
    std::memcpy(&f, x + (i - s), sizeof f);
    // |x| widened: the sign bit cleared after widening, exactly fabs then widening.
    const Words v = reinterpret_cast<Words>(__builtin_convertvector(f, Lanes)) & magnitude;
    Words keep;
    draw.below_lanes(kLaneIndex + static_cast<std::uint64_t>(i), limit, keep);
    b += reinterpret_cast<Lanes>(v);
    a += reinterpret_cast<Lanes>(v & keep);  // +0 where dropped
  }
  std::memcpy(before, &b, sizeof b);
  std::memcpy(after, &a, sizeof a);
  for (; i < t; ++i) one(i);
}

#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void drop_drawn(const kernels::CounterThreshold& draw, std::uint64_t limit, double factor, float* x, i64 first,
                i64 count) {
  i64 j = 0;
  for (; j + kLanes <= count; j += kLanes) {
    Floats f;
    std::memcpy(&f, x + j, sizeof f);
    Words keep;
    draw.below_lanes(kLaneIndex + static_cast<std::uint64_t>(first + j), limit, keep);
    if (factor != 1.0)
      f = __builtin_convertvector(__builtin_convertvector(f, Lanes) * factor, Floats);
    f = reinterpret_cast<Floats>(reinterpret_cast<FloatBits>(f) &
                                 __builtin_convertvector(keep, FloatBits));
    std::memcpy(x + j, &f, sizeof f);
  }
  for (; j < count; ++j)
    x[j] = kernels::kept_or_zero(draw.below(static_cast<std::uint64_t>(first + j), limit),
                                 kernels::rescaled(x[j], factor));
}

}  // namespace revmerge::thinning_loops
