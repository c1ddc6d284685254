// Each task's own thinning before the tasks are combined: TIES' magnitude trim, DARE's random
// drop, breadcrumbs' outlier trim and DELLA's magnitude-ranked drop, with the rescaling that
// follows them. Every ranking by magnitude is total: equal magnitudes are ordered by index, the
// lower index counting as the larger (mergekit leaves that order to torch's sort, which does
// not specify it; PEFT's topk likewise).
#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <numeric>
#include <vector>

#include "kernels/counter_rng.hpp"
#include "methods/classic/combine.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Work on a tensor is split into chunks of this many elements; sums are taken per chunk and
// the chunks' sums added in order, so that results do not depend on the thread count.
constexpr i64 kChunk = i64{1} << 16;

i64 chunk_count(i64 count) { return (count + kChunk - 1) / kChunk; }

// |v| as ordered bits: for finite floats the order of these integers is the order of |v|.
std::uint32_t magnitude_bits(float v) { return std::bit_cast<std::uint32_t>(v) & 0x7fffffffu; }

// Membership of the k largest magnitudes: everything above `threshold` (bits), and of the
// elements equal to it the first `equal_left` by index. k = 0 keeps nothing (a threshold above
// every finite magnitude), k = count everything.
struct TopRule {
  std::uint32_t threshold = 0;
  i64 equal_left = 0;
};

// Histogram of 16 bits of the magnitudes (`shift` 16: the high half; 0: the low half of those
// whose high half is `high`), counted per thread and added.
std::vector<i64> histogram(std::span<const float> x, int shift, std::uint32_t high, int threads) {
  std::vector<i64> total(65536, 0);
  const i64 count = static_cast<i64>(x.size());
#pragma omp parallel num_threads(threads)
  {
    std::vector<i64> local(65536, 0);
#pragma omp for schedule(static)
    for (i64 i = 0; i < count; ++i) {
      const std::uint32_t b = magnitude_bits(x[i]);
      if (shift == 16) ++local[b >> 16];
      else if ((b >> 16) == high) ++local[b & 0xffffu];
    }
#pragma omp critical
    for (std::size_t j = 0; j < total.size(); ++j) total[j] += local[j];
  }
  return total;
}

// The rule for the k largest magnitudes, by a radix selection on their bits (two histogram
// passes, no copy, no sort).
TopRule top_rule(std::span<const float> x, i64 k, int threads) {
  const i64 count = static_cast<i64>(x.size());
  if (k <= 0) return {0xffffffffu, 0};
  if (k >= count) return {0, count};
  const auto high = histogram(x, 16, 0, threads);
  i64 above = 0;
  std::uint32_t hi = 65535;
  while (above + high[hi] < k) above += high[hi--];
  const auto low = histogram(x, 0, hi, threads);
  std::uint32_t lo = 65535;
  while (above + low[lo] < k) above += low[lo--];
  return {(hi << 16) | lo, k - above};
}

// A rule applied chunk by chunk: how many of each chunk's elements equal to the threshold are
// inside (the first ones by index overall).
struct TopSet {
  TopRule rule;
  std::vector<i64> allowance;

  TopSet(std::span<const float> x, TopRule r, int threads) : rule(r) {
    const i64 count = static_cast<i64>(x.size()), chunks = chunk_count(count);
    std::vector<i64> equal(static_cast<std::size_t>(chunks), 0);
    const std::uint32_t threshold = rule.threshold;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i64 c = 0; c < chunks; ++c) {
      i64 e = 0;
      const i64 end = std::min(count, (c + 1) * kChunk);
      for (i64 i = c * kChunk; i < end; ++i) e += magnitude_bits(x[i]) == threshold;
      equal[c] = e;
    }
    allowance.resize(equal.size());
    i64 before = 0;
    for (std::size_t c = 0; c < equal.size(); ++c) {
      allowance[c] = std::clamp<i64>(rule.equal_left - before, 0, equal[c]);
      before += equal[c];
    }
  }

  // Walks chunk c in index order, telling whether each element is inside.
  struct Walk {
    std::uint32_t threshold;
    i64 left;
    bool next(float v) {
      const std::uint32_t b = magnitude_bits(v);
      if (b > threshold) return true;
      if (b == threshold && left > 0) {
        --left;
        return true;
      }
      return false;
    }
  };
  Walk walk(i64 c) const { return {rule.threshold, allowance[static_cast<std::size_t>(c)]}; }
};

double l1_norm(std::span<const float> x, int threads) {
  const i64 count = static_cast<i64>(x.size()), chunks = chunk_count(count);
  std::vector<double> part(static_cast<std::size_t>(chunks), 0.0);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (i64 c = 0; c < chunks; ++c)
    for (i64 i = c * kChunk; i < std::min(count, (c + 1) * kChunk); ++i) part[c] += std::fabs(x[i]);
  double s = 0;
  for (const double p : part) s += p;
  return s;
}

// Brings the kept values back to the task's L1 norm (mergekit's rescale: skipped when either
// norm is below 1e-7) or divides by the density (PEFT's DARE).
void apply_rescale(std::span<float> x, Rescale rescale, double before, double density, int threads) {
  double factor = 1.0;
  if (rescale == Rescale::inverse_density) factor = 1.0 / density;
  if (rescale == Rescale::l1) {
    const double after = l1_norm(x, threads);
    if (before >= 1e-7 && after >= 1e-7) factor = before / after;
  }
  if (factor == 1.0) return;
  const i64 count = static_cast<i64>(x.size());
#pragma omp parallel for num_threads(threads) schedule(static)
  for (i64 i = 0; i < count; ++i) x[i] = static_cast<float>(x[i] * factor);
}

}  // namespace

void magnitude_trim(std::span<float> x, double density, bool keep_at_least_one, Rescale rescale,
                    int threads) {
  if (density >= 1) return;
  const i64 count = static_cast<i64>(x.size());
  // ⌊density · count⌋ as Python's int() computes it.
  i64 k = density <= 0 ? 0 : static_cast<i64>(density * static_cast<double>(count));
  if (keep_at_least_one && density > 0) k = std::max<i64>(k, 1);
  const double before = rescale == Rescale::l1 ? l1_norm(x, threads) : 0;
  const TopSet keep(x, top_rule(x, k, threads), threads);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (i64 c = 0; c < chunk_count(count); ++c) {
    auto walk = keep.walk(c);
    const i64 end = std::min(count, (c + 1) * kChunk);
    for (i64 i = c * kChunk; i < end; ++i)
      if (!walk.next(x[i])) x[i] = 0.0f;
  }
  apply_rescale(x, rescale, before, density, threads);
}

void outlier_trim(std::span<float> x, double density, double gamma, Rescale rescale, int threads) {
  if (density >= 1) return;
  const i64 count = static_cast<i64>(x.size());
  const i64 target = density <= 0 ? 0 : static_cast<i64>(density * static_cast<double>(count));
  const i64 top = static_cast<i64>(gamma * static_cast<double>(count));
  // mergekit: n_bot = max(0, N − target − n_top) dropped from the bottom, `target` kept above
  // them; in ranks from the top that is [N − n_bot − target, N − n_bot).
  const i64 bottom = std::max<i64>(0, count - target - top);
  const double before = rescale == Rescale::l1 ? l1_norm(x, threads) : 0;
  const TopSet outer(x, top_rule(x, count - bottom, threads), threads);
  const TopSet outliers(x, top_rule(x, count - bottom - target, threads), threads);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (i64 c = 0; c < chunk_count(count); ++c) {
    auto within = outer.walk(c), dropped = outliers.walk(c);
    const i64 end = std::min(count, (c + 1) * kChunk);
    for (i64 i = c * kChunk; i < end; ++i) {
      const bool in = within.next(x[i]), out = dropped.next(x[i]);
      if (!in || out) x[i] = 0.0f;
    }
  }
  apply_rescale(x, rescale, before, density, threads);
}

void random_drop(std::span<float> x, double density, Rescale rescale, std::uint64_t seed,
                 std::uint64_t stream, int threads) {
  if (density >= 1) return;
  if (density <= 0) {
    std::fill(x.begin(), x.end(), 0.0f);
    return;
  }
  const double before = rescale == Rescale::l1 ? l1_norm(x, threads) : 0;
  const i64 count = static_cast<i64>(x.size());
  const kernels::CounterThreshold draw(seed, stream);
  const std::uint64_t limit = kernels::CounterThreshold::limit(density);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (i64 j = 0; j < count; ++j)
    if (!draw.below(static_cast<std::uint64_t>(j), limit)) x[j] = 0.0f;
  apply_rescale(x, rescale, before, density, threads);
}

float della_probability(i64 rank, i64 length, double density, double epsilon) {
  // mergekit: rank_norm = (rank − 1) / (length − 1) clamped to [0, 1], then
  // (density − ε) + rank_norm · 2 · ε, each step in f32 (−ffp-contract=off keeps them apart).
  // A row of one element divides 0 by 0 there; here it sits in the middle.
  const float norm = length > 1 ? std::clamp(static_cast<float>(rank - 1) / static_cast<float>(length - 1), 0.0f, 1.0f)
                                : 0.5f;
  const float spread = norm * 2.0f * static_cast<float>(epsilon);
  return static_cast<float>(density - epsilon) + spread;
}

void della_drop(std::span<float> x, std::span<const i64> shape, double density, double epsilon,
                Rescale rescale, std::uint64_t seed, std::uint64_t stream, int threads) {
  if (density >= 1) return;
  if (density <= 0) {
    std::fill(x.begin(), x.end(), 0.0f);
    return;
  }
  // Rows along the second axis, as mergekit ranks (dim 1; a 1-D tensor is one row).
  const i64 count = static_cast<i64>(x.size());
  const i64 length = shape.size() >= 2 ? shape[1] : count;
  const i64 inner = shape.size() >= 2 ? std::accumulate(shape.begin() + 2, shape.end(), i64{1}, std::multiplies<>()) : 1;
  if (length == 0 || inner == 0) return;
  const i64 outer = count / (length * inner);
  const double before = rescale == Rescale::l1 ? l1_norm(x, threads) : 0;
  const kernels::CounterThreshold draw(seed, stream);
#pragma omp parallel num_threads(threads)
  {
    std::vector<i64> order(static_cast<std::size_t>(length));
    std::vector<float> keep_p(static_cast<std::size_t>(length));
#pragma omp for schedule(dynamic, 16)
    for (i64 row = 0; row < outer * inner; ++row) {
      const i64 o = row / inner, in = row % inner;
      const auto at = [&](i64 j) { return (o * length + j) * inner + in; };
      std::iota(order.begin(), order.end(), i64{0});
      std::stable_sort(order.begin(), order.end(), [&](i64 a, i64 b) {
        return std::fabs(x[at(a)]) > std::fabs(x[at(b)]);
      });
      // Position p from the top is ascending rank length − p.
      for (i64 p = 0; p < length; ++p)
        keep_p[order[p]] = della_probability(length - p, length, density, epsilon);
      for (i64 j = 0; j < length; ++j) {
        const i64 e = at(j);
        if (!draw.below(static_cast<std::uint64_t>(e), kernels::CounterThreshold::limit(keep_p[j]))) x[e] = 0.0f;
      }
    }
  }
  apply_rescale(x, rescale, before, density, threads);
}

}  // namespace revmerge
