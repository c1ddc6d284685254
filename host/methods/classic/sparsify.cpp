// Each task's own thinning before the tasks are combined: TIES' magnitude trim, DARE's random
// drop, breadcrumbs' outlier trim and DELLA's magnitude-ranked drop, with the rescaling that
// follows them. Every ranking by magnitude is total: equal magnitudes are ordered by index, the
// lower index counting as the larger (mergekit leaves that order to torch's sort, which does
// not specify it; PEFT's topk likewise).
#include <algorithm>
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

// Membership of the k largest magnitudes: everything above `threshold`, and of the elements
// equal to it the first `equal_left` by index.
struct TopRule {
  float threshold = 0;
  i64 equal_left = 0;
};

TopRule top_rule(std::span<const float> x, i64 k) {
  const i64 count = static_cast<i64>(x.size());
  if (k <= 0) return {INFINITY, 0};
  if (k >= count) return {-1.0f, 0};  // every magnitude is above −1
  std::vector<float> mag(x.size());
  std::transform(x.begin(), x.end(), mag.begin(), [](float v) { return std::fabs(v); });
  std::nth_element(mag.begin(), mag.begin() + (k - 1), mag.end(), std::greater<float>());
  const float threshold = mag[static_cast<std::size_t>(k - 1)];
  i64 above = 0;
  for (const float v : x) above += std::fabs(v) > threshold;
  return {threshold, k - above};
}

// Walks x in index order, telling whether each element is within the rule's top set.
struct TopWalk {
  TopRule rule;
  bool next(float v) {
    const float m = std::fabs(v);
    if (m > rule.threshold) return true;
    if (m == rule.threshold && rule.equal_left > 0) {
      --rule.equal_left;
      return true;
    }
    return false;
  }
};

double l1_norm(std::span<const float> x) {
  double s = 0;
  for (const float v : x) s += std::fabs(v);
  return s;
}

// Brings the kept values back to the task's L1 norm (mergekit's rescale: skipped when either
// norm is below 1e-7) or divides by the density (PEFT's DARE).
void apply_rescale(std::span<float> x, Rescale rescale, double before, double density) {
  double factor = 1.0;
  if (rescale == Rescale::inverse_density) factor = 1.0 / density;
  if (rescale == Rescale::l1) {
    const double after = l1_norm(x);
    if (before >= 1e-7 && after >= 1e-7) factor = before / after;
  }
  if (factor != 1.0)
    for (auto& v : x) v = static_cast<float>(v * factor);
}

}  // namespace

void magnitude_trim(std::span<float> x, double density, bool keep_at_least_one, Rescale rescale) {
  if (density >= 1) return;
  const i64 count = static_cast<i64>(x.size());
  // ⌊density · count⌋ as Python's int() computes it.
  i64 k = density <= 0 ? 0 : static_cast<i64>(density * static_cast<double>(count));
  if (keep_at_least_one && density > 0) k = std::max<i64>(k, 1);
  const double before = rescale == Rescale::l1 ? l1_norm(x) : 0;
  TopWalk keep{top_rule(x, k)};
  for (auto& v : x)
    if (!keep.next(v)) v = 0.0f;
  apply_rescale(x, rescale, before, density);
}

void outlier_trim(std::span<float> x, double density, double gamma, Rescale rescale) {
  if (density >= 1) return;
  const i64 count = static_cast<i64>(x.size());
  const i64 target = density <= 0 ? 0 : static_cast<i64>(density * static_cast<double>(count));
  const i64 top = static_cast<i64>(gamma * static_cast<double>(count));
  // mergekit: n_bot = max(0, N − target − n_top) dropped from the bottom, `target` kept above
  // them; in ranks from the top that is [N − n_bot − target, N − n_bot).
  const i64 bottom = std::max<i64>(0, count - target - top);
  const double before = rescale == Rescale::l1 ? l1_norm(x) : 0;
  TopWalk outer{top_rule(x, count - bottom)}, outliers{top_rule(x, count - bottom - target)};
  for (auto& v : x) {
    const bool within = outer.next(v), dropped_top = outliers.next(v);
    if (!within || dropped_top) v = 0.0f;
  }
  apply_rescale(x, rescale, before, density);
}

void random_drop(std::span<float> x, double density, Rescale rescale, std::uint64_t seed,
                 std::uint64_t stream) {
  if (density >= 1) return;
  if (density <= 0) {
    std::fill(x.begin(), x.end(), 0.0f);
    return;
  }
  const double before = l1_norm(x);
  for (std::size_t j = 0; j < x.size(); ++j)
    if (!(kernels::counter_uniform(seed, stream, j) < density)) x[j] = 0.0f;
  apply_rescale(x, rescale, before, density);
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
                Rescale rescale, std::uint64_t seed, std::uint64_t stream) {
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
  const double before = l1_norm(x);
  std::vector<i64> order(static_cast<std::size_t>(length));
  std::vector<float> keep_p(static_cast<std::size_t>(length));
  for (i64 o = 0; o < outer; ++o)
    for (i64 in = 0; in < inner; ++in) {
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
        if (!(kernels::counter_uniform(seed, stream, static_cast<std::uint64_t>(e)) < double(keep_p[j])))
          x[e] = 0.0f;
      }
    }
  apply_rescale(x, rescale, before, density);
}

}  // namespace revmerge
