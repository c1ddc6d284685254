// The element-wise methods against the double-precision reference, for every method under both
// conventions (whose defaults are restated here from PEFT and mergekit), odd sizes, negative
// weights and per-task densities; and the trim and drop steps on their own.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "kernels/counter_rng.hpp"
#include "methods/classic/combine.hpp"
#include "reference/classic_reference.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

struct Case {
  ClassicMethod method;
  Convention convention;
  reference::Recipe expected;  // the convention's definition, stated independently
  std::int64_t n, count;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const auto& c = info.param;
  return to_string(c.method) + (c.convention == Convention::peft ? "_peft_" : "_mergekit_") +
         std::to_string(c.n) + "x" + std::to_string(c.count);
}

std::vector<Case> all_cases() {
  using R = reference::Recipe;
  const std::vector<std::tuple<ClassicMethod, Convention, R>> defs = {
      {ClassicMethod::linear, Convention::peft, R{}},
      {ClassicMethod::task_arithmetic, Convention::peft, R{}},
      {ClassicMethod::magnitude_prune, Convention::peft, R{.trim = true}},
      {ClassicMethod::ties, Convention::peft, R{.trim = true, .elect = true, .normalize = 1}},
      {ClassicMethod::dare_linear, Convention::peft, R{.drop = true, .rescale = 1}},
      {ClassicMethod::dare_ties, Convention::peft,
       R{.drop = true, .rescale = 1, .elect = true, .normalize = 1}},
      {ClassicMethod::linear, Convention::mergekit, R{.normalize = 3}},
      {ClassicMethod::task_arithmetic, Convention::mergekit, R{}},
      {ClassicMethod::magnitude_prune, Convention::mergekit, R{.trim = true, .keep_one = true}},
      {ClassicMethod::ties, Convention::mergekit,
       R{.trim = true, .keep_one = true, .elect = true, .elect_weighted = true, .normalize = 2}},
      {ClassicMethod::dare_linear, Convention::mergekit, R{.drop = true, .rescale = 2}},
      {ClassicMethod::dare_ties, Convention::mergekit,
       R{.drop = true, .rescale = 2, .elect = true, .elect_weighted = true}},
  };
  std::vector<Case> cases;
  for (const auto& [m, conv, r] : defs)
    for (const auto& [n, count] : std::vector<std::pair<std::int64_t, std::int64_t>>{
             {1, 7}, {2, 1}, {3, 13}, {5, 5}, {4, 1000}})
      cases.push_back({m, conv, r, n, count});
  return cases;
}

class CombineVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(CombineVsReference, MatchesDoubleReference) {
  const auto& c = GetParam();
  std::mt19937_64 rng(17 + c.n * 31 + c.count);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<double> unit(0.2, 1.0);
  std::vector<float> stack(static_cast<std::size_t>(c.n * c.count));
  for (auto& v : stack) v = normal(rng);
  for (std::size_t j = 3; j < stack.size(); j += 11) stack[j] = 0.0f;                // zeros
  for (std::size_t j = 5; j < stack.size(); j += 13) stack[j] = -stack[j - 1];       // equal |x|
  std::vector<double> w(c.n), d(c.n);
  for (std::int64_t t = 0; t < c.n; ++t) {
    w[t] = (t % 3 == 1 ? -0.5 : 1.0) * unit(rng);
    d[t] = unit(rng);
  }
  ClassicMergeOptions o;
  o.method = c.method;
  o.lambda = 0.75;
  const auto recipe = make_recipe(o, c.convention);
  auto expected_recipe = c.expected;
  expected_recipe.lambda = 0.75;
  expected_recipe.elect_weighted = c.convention == Convention::mergekit;
  std::vector<std::vector<double>> tasks(c.n);
  for (std::int64_t t = 0; t < c.n; ++t)
    tasks[t].assign(stack.begin() + t * c.count, stack.begin() + (t + 1) * c.count);
  const auto want = reference::combine(expected_recipe, tasks, w, d, "layer.x", 42);
  std::vector<float> got(static_cast<std::size_t>(c.count));
  combine_stack(recipe, {stack, c.n, c.count, w, d, "layer.x", 42}, got, 2);
  double scale = 1e-6;
  for (const auto v : want) scale = std::max(scale, std::fabs(v));
  for (std::int64_t j = 0; j < c.count; ++j)
    ASSERT_NEAR(got[j], want[j], 2e-6 * scale) << "element " << j << " (seed 17)";
}

INSTANTIATE_TEST_SUITE_P(Methods, CombineVsReference, ::testing::ValuesIn(all_cases()), case_name);

TEST(Combine, OverridesChangeTheRecipe) {
  ClassicMergeOptions o;
  o.method = ClassicMethod::ties;
  o.normalize = false;
  EXPECT_EQ(make_recipe(o, Convention::peft).normalize, Normalize::none);
  o.method = ClassicMethod::dare_ties;
  o.normalize = true;
  o.rescale = false;
  const auto r = make_recipe(o, Convention::mergekit);
  EXPECT_EQ(r.normalize, Normalize::agreeing_weight);
  EXPECT_EQ(r.rescale, Rescale::none);
  o.method = ClassicMethod::cat;
  EXPECT_THROW(make_recipe(o, Convention::peft), usage_error);
}

TEST(Combine, TrimKeepsExactlyKWithTiesToTheLowerIndex) {
  std::vector<float> x = {1, -3, 2, 3, -2, 3, 0.5f};
  magnitude_trim(x, 0.5, false);  // k = 3: the three 3's
  EXPECT_EQ(x, (std::vector<float>{0, -3, 0, 3, 0, 3, 0}));
  std::vector<float> y = {1, -3, 2, 3, -2, 3, 0.5f};
  magnitude_trim(y, 0.3, false);  // k = 2: ties at |3| go to the lower indices
  EXPECT_EQ(y, (std::vector<float>{0, -3, 0, 3, 0, 0, 0}));
  std::vector<float> z = {1, 2, 3};
  magnitude_trim(z, 0.1, false);  // ⌊0.3⌋ = 0 (PEFT) ...
  EXPECT_EQ(z, (std::vector<float>{0, 0, 0}));
  z = {1, 2, 3};
  magnitude_trim(z, 0.1, true);  // ... at least one (mergekit)
  EXPECT_EQ(z, (std::vector<float>{0, 0, 3}));
}

TEST(Combine, DropKeepsTheDensityAndIsReproducible) {
  const std::size_t m = 200000;
  std::vector<float> a(m, 1.0f);
  random_drop(a, 0.3, Rescale::inverse_density, 9, kernels::stream_id("t#0"));
  std::size_t kept = 0;
  for (const auto v : a) kept += v != 0;
  // Binomial(m, 0.3): 5 standard deviations.
  EXPECT_NEAR(double(kept) / m, 0.3, 5 * std::sqrt(0.3 * 0.7 / m));
  EXPECT_FLOAT_EQ(a[std::find_if(a.begin(), a.end(), [](float v) { return v != 0; }) - a.begin()],
                  float(1 / 0.3));
  std::vector<float> b(m, 1.0f), c(m, 1.0f);
  random_drop(b, 0.3, Rescale::inverse_density, 9, kernels::stream_id("t#0"));
  random_drop(c, 0.3, Rescale::inverse_density, 10, kernels::stream_id("t#0"));
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::vector<float> l(m);
  for (std::size_t j = 0; j < m; ++j) l[j] = float(j % 7) - 3;
  double before = 0, after = 0;
  for (const auto v : l) before += std::fabs(v);
  random_drop(l, 0.5, Rescale::l1, 1, 2);
  for (const auto v : l) after += std::fabs(v);
  EXPECT_NEAR(after, before, 1e-6 * before);  // mergekit's l1 rescale keeps the L1 norm
}

TEST(Combine, OutlierTrimKeepsTheRanksBelowTheOutliers) {
  // Ranks from the top (ties to the lower index): 9(0) -8(1) 7(2) 7(3) 6(4) -5(5) 4(6) 3(7)
  // 2(8) 1(9) as indices 0..9 below. γ = 0.2 drops two, density 0.5 keeps the next five.
  const std::vector<float> x0 = {9, -8, 7, 7, 6, -5, 4, 3, 2, 1};
  auto x = x0;
  outlier_trim(x, 0.5, 0.2, Rescale::none);
  EXPECT_EQ(x, (std::vector<float>{0, 0, 7, 7, 6, -5, 4, 0, 0, 0}));
  // density + γ above 1: mergekit drops fewer outliers so that `density` is kept.
  x = x0;
  outlier_trim(x, 0.9, 0.3, Rescale::none);
  EXPECT_EQ(x, (std::vector<float>{0, -8, 7, 7, 6, -5, 4, 3, 2, 1}));
  // Equal magnitudes: the lower index ranks higher, so it is the one dropped as an outlier.
  std::vector<float> y = {3, 3, 3, 1};
  outlier_trim(y, 0.5, 0.25, Rescale::none);
  EXPECT_EQ(y, (std::vector<float>{0, 3, 3, 0}));
  // γ·N below one element: nothing dropped from the top.
  y = {3, 2, 1, 0.5f};
  outlier_trim(y, 0.5, 0.1, Rescale::l1);
  const double f = 6.5 / 5.0;  // back to the L1 norm
  EXPECT_EQ(y, (std::vector<float>{float(3 * f), float(2 * f), 0, 0}));
}

TEST(Combine, DellaProbabilitiesRunFromDensityMinusToPlusEpsilon) {
  EXPECT_FLOAT_EQ(della_probability(1, 5, 0.5, 0.1), 0.4f);   // smallest magnitude
  EXPECT_FLOAT_EQ(della_probability(5, 5, 0.5, 0.1), 0.6f);   // largest
  EXPECT_FLOAT_EQ(della_probability(3, 5, 0.5, 0.1), 0.5f);   // the middle
  EXPECT_FLOAT_EQ(della_probability(1, 1, 0.3, 0.2), 0.3f);   // a row of one
  // Rows along the second axis: a 4 × 50000 tensor whose magnitudes grow along each row.
  const std::int64_t rows = 4, cols = 50000;
  std::vector<float> x(rows * cols);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) x[r * cols + c] = (c % 2 ? -1.0f : 1.0f) * float(c + 1);
  const std::vector<std::int64_t> shape = {rows, cols};
  auto a = x, b = x;
  della_drop(a, shape, 0.5, 0.2, Rescale::none, 4, kernels::stream_id("w#0"));
  della_drop(b, shape, 0.5, 0.2, Rescale::none, 4, kernels::stream_id("w#0"));
  EXPECT_EQ(a, b);  // the same seed and stream, the same mask
  // Kept fraction in each row's lowest and highest tenth: about 0.32 and 0.68 (5 σ bounds).
  const double m = rows * cols / 10.0;
  double low = 0, high = 0;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols / 10; ++c) {
      low += a[r * cols + c] != 0;
      high += a[r * cols + cols - 1 - c] != 0;
    }
  EXPECT_NEAR(low / m, 0.32, 5 * std::sqrt(0.32 * 0.68 / m));
  EXPECT_NEAR(high / m, 0.68, 5 * std::sqrt(0.32 * 0.68 / m));
  for (std::size_t j = 0; j < x.size(); ++j) ASSERT_TRUE(a[j] == 0 || a[j] == x[j]) << j;
}

// SCE against a plain statement of its definition: the top ⌊k · m⌋ elements by variance
// across tasks (m of them non-zero), weights ∝ mean squares, an election by sum, and the
// agreeing values averaged with those weights.
TEST(Combine, SceMatchesItsDefinition) {
  const std::int64_t n = 3, count = 40;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> stack(n * count);
  for (auto& v : stack) v = normal(rng);
  for (std::int64_t t = 0; t < n; ++t) stack[t * count + 7] = 0.25f;  // variance 0
  const auto input = stack;
  ClassicMergeOptions o;
  o.method = ClassicMethod::sce;
  const auto recipe = make_recipe(o, Convention::mergekit);
  const std::vector<double> ones(n, 1.0);
  std::vector<float> got(count);
  CombineInput in{stack, n, count, ones, ones, "sce", 0};
  in.select_topk = 0.5;
  combine_stack(recipe, in, got, 2);

  std::vector<double> var(count);
  for (std::int64_t j = 0; j < count; ++j) {
    double mean = 0, sq = 0;
    for (std::int64_t t = 0; t < n; ++t) mean += input[t * count + j] / double(n);
    for (std::int64_t t = 0; t < n; ++t) sq += std::pow(input[t * count + j] - mean, 2);
    var[j] = sq / n;
  }
  std::vector<double> sorted = var;
  std::sort(sorted.rbegin(), sorted.rend());
  const double cut = sorted[static_cast<std::size_t>(0.5 * 39) - 1];  // 39 non-zero variances
  std::vector<std::vector<double>> kept(n, std::vector<double>(count, 0.0));
  std::vector<double> w(n, 0.0);
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < count; ++j)
      if (var[j] >= cut) {
        kept[t][j] = input[t * count + j];
        w[t] += kept[t][j] * kept[t][j] / count;
      }
  const double wsum = w[0] + w[1] + w[2];
  for (std::int64_t j = 0; j < count; ++j) {
    double vote = 0, num = 0, den = 0;
    for (std::int64_t t = 0; t < n; ++t) vote += kept[t][j];
    const double sign = vote >= 0 ? 1 : -1;
    for (std::int64_t t = 0; t < n; ++t)
      if (kept[t][j] * sign > 0) {
        num += w[t] / wsum * kept[t][j];
        den += w[t] / wsum;
      }
    ASSERT_NEAR(got[j], num / std::max(den, 1e-6), 1e-6) << "element " << j;
  }
}

// The parallel trims against a plain statement of them (a stable sort by magnitude), on a
// tensor spanning several chunks with many equal magnitudes, and the same bytes for any thread
// count.
TEST(Combine, ParallelTrimsMatchASortAndDoNotDependOnThreads) {
  const std::size_t m = 300007;
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<int> level(-40, 40);
  std::vector<float> x(m);
  for (auto& v : x) v = 0.125f * float(level(rng));  // 81 magnitudes: ties everywhere
  std::vector<std::size_t> order(m);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return std::fabs(x[a]) > std::fabs(x[b]); });
  const auto keep_ranks = [&](std::size_t from, std::size_t to) {
    std::vector<float> want(m, 0.0f);
    for (std::size_t r = from; r < to; ++r) want[order[r]] = x[order[r]];
    return want;
  };
  for (const int threads : {1, 3}) {
    auto a = x;
    magnitude_trim(a, 0.37, true, Rescale::none, threads);
    EXPECT_EQ(a, keep_ranks(0, static_cast<std::size_t>(0.37 * m))) << threads << " threads";
    auto b = x;
    outlier_trim(b, 0.5, 0.05, Rescale::none, threads);
    const auto top = static_cast<std::size_t>(0.05 * m), target = static_cast<std::size_t>(0.5 * m);
    EXPECT_EQ(b, keep_ranks(top, top + target)) << threads << " threads";
  }
  // The random drops and an L1 rescale: the same bytes on one thread and on three.
  const auto thinned = [&](int threads) {
    auto d = x, f = x;
    std::vector<float> e(x.begin(), x.begin() + 300000);  // 1000 rows of 300
    random_drop(d, 0.4, Rescale::l1, 5, 6, threads);
    della_drop(e, std::vector<std::int64_t>{1000, 300}, 0.4, 0.2, Rescale::l1, 5, 6, threads);
    magnitude_trim(f, 0.2, true, Rescale::l1, threads);
    d.insert(d.end(), e.begin(), e.end());
    d.insert(d.end(), f.begin(), f.end());
    return d;
  };
  const auto one = thinned(1), three = thinned(3);
  EXPECT_EQ(one, three);
}

TEST(Combine, IntegerDrawComparisonIsTheUniformComparison) {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const kernels::CounterThreshold draw(9, 123);
  for (int i = 0; i < 200000; ++i) {
    const double p = i % 4 == 0 ? double(float(unit(rng))) : i % 4 == 1 ? 0.5 : unit(rng);
    const std::uint64_t j = rng() % 1000000;
    // Also exactly at a draw: p equal to the uniform itself.
    const double q = i % 7 == 0 ? kernels::counter_uniform(9, 123, j) : p;
    ASSERT_EQ(draw.below(j, kernels::CounterThreshold::limit(q)), kernels::counter_uniform(9, 123, j) < q)
        << "p " << q << " index " << j;
  }
}

}  // namespace
}  // namespace revmerge
