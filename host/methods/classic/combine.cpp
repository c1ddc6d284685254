#include "methods/classic/combine.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/counter_rng.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Number of elements a trim keeps: ⌊density · count⌋ as Python's int() computes it.
i64 trim_count(double density, i64 count, bool keep_at_least_one) {
  auto k = static_cast<i64>(density * static_cast<double>(count));
  if (keep_at_least_one) k = std::max<i64>(k, 1);
  return std::min(k, count);
}

int sign_of(double v) { return (v > 0) - (v < 0); }

}  // namespace

CombineRecipe make_recipe(const ClassicMergeOptions& o, Convention convention) {
  const bool mk = convention == Convention::mergekit;
  CombineRecipe r;
  r.lambda = o.lambda.value_or(1.0);
  r.election = o.election;
  r.elect_on_weighted = mk;
  r.keep_at_least_one = mk;
  const auto dare_rescale = mk ? Rescale::l1 : Rescale::inverse_density;
  bool normalize_default = false;
  switch (o.method) {
    case ClassicMethod::linear:
      normalize_default = mk;  // mergekit's linear is a weighted average of the weights
      break;
    case ClassicMethod::task_arithmetic:
      break;
    case ClassicMethod::magnitude_prune:
      r.magnitude_trim = true;
      break;
    case ClassicMethod::ties:
      r.magnitude_trim = r.elect_sign = true;
      normalize_default = true;
      break;
    case ClassicMethod::dare_linear:
      r.random_drop = true;
      break;
    case ClassicMethod::dare_ties:
      r.random_drop = r.elect_sign = true;
      normalize_default = !mk;  // PEFT's disjoint mean; mergekit's dare_ties does not divide
      break;
    case ClassicMethod::cat:
    case ClassicMethod::svd:
    case ClassicMethod::slerp:
    case ClassicMethod::nearswap:
    case ClassicMethod::model_stock:
      throw usage_error("--method " + to_string(o.method) + " is not an element-wise method");
  }
  if (r.random_drop) r.rescale = o.rescale.value_or(true) ? dare_rescale : Rescale::none;
  if (o.normalize.value_or(normalize_default))
    r.normalize = !r.elect_sign ? Normalize::weight_sum
                  : mk          ? Normalize::agreeing_weight
                                : Normalize::agreeing_count;
  return r;
}

void magnitude_trim(std::span<float> x, double density, bool keep_at_least_one) {
  if (density >= 1) return;
  const i64 count = static_cast<i64>(x.size());
  if (density <= 0 || count == 0) {
    std::fill(x.begin(), x.end(), 0.0f);
    return;
  }
  const i64 k = trim_count(density, count, keep_at_least_one);
  if (k == count) return;
  if (k == 0) {
    std::fill(x.begin(), x.end(), 0.0f);
    return;
  }
  // The k-th largest magnitude; everything above it stays, and of the elements equal to it
  // the ones with the lowest indices fill the remaining places.
  std::vector<float> mag(x.size());
  std::transform(x.begin(), x.end(), mag.begin(), [](float v) { return std::fabs(v); });
  std::nth_element(mag.begin(), mag.begin() + (k - 1), mag.end(), std::greater<float>());
  const float threshold = mag[static_cast<std::size_t>(k - 1)];
  i64 above = 0;
  for (const float v : x) above += std::fabs(v) > threshold;
  i64 equal_left = k - above;
  for (auto& v : x) {
    const float m = std::fabs(v);
    if (m > threshold) continue;
    if (m == threshold && equal_left > 0) {
      --equal_left;
      continue;
    }
    v = 0.0f;
  }
}

void random_drop(std::span<float> x, double density, Rescale rescale, std::uint64_t seed,
                 std::uint64_t stream) {
  if (density >= 1) return;
  if (density <= 0) {
    std::fill(x.begin(), x.end(), 0.0f);
    return;
  }
  double before = 0, after = 0;
  for (std::size_t j = 0; j < x.size(); ++j) {
    before += std::fabs(x[j]);
    if (kernels::counter_uniform(seed, stream, j) < density)
      after += std::fabs(x[j]);
    else
      x[j] = 0.0f;
  }
  double factor = 1.0;
  if (rescale == Rescale::inverse_density) factor = 1.0 / density;
  // mergekit's l1 rescale leaves the tensor as it is when either norm is below 1e-7.
  if (rescale == Rescale::l1 && before >= 1e-7 && after >= 1e-7) factor = before / after;
  if (factor != 1.0)
    for (auto& v : x) v = static_cast<float>(v * factor);
}

void combine_stack(const CombineRecipe& r, const CombineInput& in, std::span<float> out,
                   int threads) {
  const i64 n = in.n, count = in.count;
  if (static_cast<i64>(in.stack.size()) != n * count || static_cast<i64>(out.size()) != count ||
      static_cast<i64>(in.weights.size()) != n || static_cast<i64>(in.densities.size()) != n)
    throw std::logic_error("combine_stack: sizes do not match");
  const auto task = [&](i64 t) { return in.stack.subspan(t * count, count); };
  if (r.magnitude_trim || r.random_drop) {
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (i64 t = 0; t < n; ++t) {
      if (r.magnitude_trim) magnitude_trim(task(t), in.densities[t], r.keep_at_least_one);
      if (r.random_drop)
        random_drop(task(t), in.densities[t], r.rescale, in.seed,
                    kernels::stream_id(in.name + "#" + std::to_string(t)));
    }
  }
  const float* x = in.stack.data();
  const double* w = in.weights.data();
  double weight_sum = 0;
  for (i64 t = 0; t < n; ++t) weight_sum += w[t];
  if (std::fabs(weight_sum) < 1e-8) weight_sum = 1;  // mergekit's guard
#pragma omp parallel for num_threads(threads) schedule(static)
  for (i64 j = 0; j < count; ++j) {
    int majority = 1;
    if (r.elect_sign) {
      double vote = 0;
      for (i64 t = 0; t < n; ++t) {
        const double e = r.elect_on_weighted ? w[t] * x[t * count + j] : x[t * count + j];
        vote += r.election == SignElection::sum ? e : sign_of(e);
      }
      majority = vote >= 0 ? 1 : -1;
    }
    double sum = 0, agreeing = 0, agreeing_weight = 0;
    for (i64 t = 0; t < n; ++t) {
      const double v = x[t * count + j];
      if (r.elect_sign) {
        const double e = r.elect_on_weighted ? w[t] * v : v;
        if (sign_of(e) != majority) continue;
        agreeing += 1;
        agreeing_weight += w[t];
      }
      sum += w[t] * v;
    }
    double divisor = 1;
    switch (r.normalize) {
      case Normalize::none: break;
      case Normalize::agreeing_count: divisor = std::max(agreeing, 1.0); break;
      case Normalize::agreeing_weight: divisor = agreeing_weight == 0 ? 1 : agreeing_weight; break;
      case Normalize::weight_sum: divisor = weight_sum; break;
    }
    out[j] = static_cast<float>(sum / divisor * r.lambda);
  }
}

}  // namespace revmerge
