// RankSelect (rank_select.hpp): the values at chosen ranks of many doubles seen in pieces, exact
// whichever way the passes go — radix passes, keeping the few in question, or a sample and the
// values inside its brackets (rank_brackets.hpp) — compared with a sort of the same values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>

#include <omp.h>

#include "kernels/elementwise.hpp"
#include "methods/classic/rank_select.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

std::uint64_t ordered(double x) { return kernels::ordered_bits(x); }

struct Outcome {
  int passes = 0;
  bool bracketed = false;
};

// Runs `select` over v in pieces of `piece` values on `threads` threads until it has its values.
Outcome run_passes(RankSelect& select, const std::vector<double>& v, std::size_t piece,
                   int threads) {
  Outcome o;
  while (select.wants_pass()) {
    for (std::size_t at = 0; at < v.size(); at += piece)
      select.add_made(
          static_cast<i64>(std::min(piece, v.size() - at)),
          [&](i64 first, i64 count, double*) {
            return std::span<const double>(v).subspan(at + static_cast<std::size_t>(first),
                                                      static_cast<std::size_t>(count));
          },
          threads);
    select.end_pass();
    ++o.passes;
    if (o.passes > 8) break;
  }
  o.bracketed = select.bracketed();
  return o;
}

// Every rank's value, and the counts below and at it, as a sort by the ordered bits gives them.
void expect_exact(const RankSelect& select, const std::vector<double>& v,
                  const std::vector<i64>& ranks, const std::string& what) {
  auto sorted = v;
  std::sort(sorted.begin(), sorted.end(),
            [](double a, double b) { return ordered(a) < ordered(b); });
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    const std::uint64_t k = ordered(sorted[static_cast<std::size_t>(ranks[r])]);
    EXPECT_EQ(ordered(select.value(r)), k) << what << ", rank " << ranks[r];
    EXPECT_EQ(select.below(r),
              std::count_if(v.begin(), v.end(), [&](double y) { return ordered(y) < k; }))
        << what << ", rank " << ranks[r];
    EXPECT_EQ(select.equal(r),
              std::count_if(v.begin(), v.end(), [&](double y) { return ordered(y) == k; }))
        << what << ", rank " << ranks[r];
  }
}

TEST(RankSelect, IsExactOverPieces) {
  // Negative and positive values, zeros of both signs, many duplicates.
  std::mt19937 rng(11);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> v(100003);
  for (auto& x : v) x = std::round(normal(rng) * 50.0) / 7.0;
  v[5] = -0.0;
  v[6] = 1e-300;
  v[7] = -1e300;
  const std::vector<i64> ranks{0, 1, 25000, 50001, 75000, 100002};
  RankSelect select(ranks);
  while (select.wants_pass()) {
    for (std::size_t at = 0; at < v.size(); at += 9973)
      select.add(
          std::span<const double>(v).subspan(at, std::min<std::size_t>(9973, v.size() - at)));
    select.end_pass();
  }
  auto sorted = v;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t r = 0; r < ranks.size(); ++r)
    EXPECT_EQ(select.value(r), sorted[static_cast<std::size_t>(ranks[r])]) << "rank " << ranks[r];

  // Keeping the values in question once they are few: the same values and counts in fewer
  // passes — two where the first digit leaves few (the ranks 0 and 100002 are alone in theirs,
  // but the middle ones share their high bits with thousands), three or four with less room.
  // (The selection's order is the bits': −0 below +0, which std::sort leaves mixed.)
  const auto ordered = [&](double x) { return kernels::ordered_bits(x); };
  std::sort(sorted.begin(), sorted.end(),
            [&](double a, double b) { return ordered(a) < ordered(b); });
  for (const i64 most : {i64{200000}, i64{100}, i64{1}}) {
    RankSelect keeping(ranks);
    keeping.keep_at_most(most);
    int passes = 0, kept = 0;
    while (keeping.wants_pass()) {
      kept += keeping.keeping();
      for (std::size_t at = 0; at < v.size(); at += 9973)
        keeping.add_made(
            static_cast<i64>(std::min<std::size_t>(9973, v.size() - at)),
            [&](i64 first, i64 count, double*) {
              return std::span<const double>(v).subspan(at + first, count);
            },
            2);
      keeping.end_pass();
      ++passes;
    }
    if (most == 200000) EXPECT_EQ(passes, 2);
    if (most == 1) EXPECT_EQ(kept, 0);
    EXPECT_LE(passes, 4);
    for (std::size_t r = 0; r < ranks.size(); ++r) {
      const double x = sorted[static_cast<std::size_t>(ranks[r])];
      EXPECT_EQ(ordered(keeping.value(r)), ordered(x))
          << "rank " << ranks[r] << ", keeping " << most;
      EXPECT_EQ(keeping.below(r), std::count_if(v.begin(), v.end(),
                                                [&](double y) { return ordered(y) < ordered(x); }));
      EXPECT_EQ(keeping.equal(r), std::count_if(v.begin(), v.end(), [&](double y) {
                  return ordered(y) == ordered(x);
                }));
      EXPECT_EQ(keeping.below(r), select.below(r));
      EXPECT_EQ(keeping.equal(r), select.equal(r));
    }
  }
}

TEST(RankSelect, SampledPassesAreExactInTwo) {
  // 1.2 M values (a strided sample): heavy-tailed, duplicates, both zeros, a NaN, ±∞, ranks
  // near the ends (open brackets) and in the middle; pieces that do not divide the values.
  std::mt19937 rng(5);
  std::lognormal_distribution<double> spread(0.0, 2.0);
  std::vector<double> v(1200007);
  for (auto& x : v) x = std::round(spread(rng) * 64) / 64 * (rng() % 5 == 0 ? -1 : 1);
  v[17] = -0.0;
  v[18] = 0.0;
  v[19] = std::numeric_limits<double>::quiet_NaN();
  v[20] = std::numeric_limits<double>::infinity();
  v[21] = -std::numeric_limits<double>::infinity();
  for (const auto& ranks :
       {std::vector<i64>{0, 600003, 1200006}, std::vector<i64>{3, 300001, 900005}})
    for (const int threads : {1, 2}) {
      RankSelect select(ranks);
      select.keep_at_most(RankSelect::keep_limit(static_cast<i64>(v.size())));
      select.sample_first(static_cast<i64>(v.size()), ranks.size());
      const auto o = run_passes(select, v, 65521, threads);
      EXPECT_EQ(o.passes, 2) << threads << " threads";
      EXPECT_TRUE(o.bracketed);
      expect_exact(select, v, ranks, "sampled, " + std::to_string(threads) + " threads");
    }
}

TEST(RankSelect, SmallTensorsAreSampledWholeInOnePass) {
  std::vector<double> v(5000);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>((i * 7919) % 1013) - 300;
  const std::vector<i64> ranks{1249, 2499, 3749};
  RankSelect select(ranks);
  select.sample_first(static_cast<i64>(v.size()), ranks.size());
  const auto o = run_passes(select, v, 333, 2);
  EXPECT_EQ(o.passes, 1);
  EXPECT_TRUE(o.bracketed);
  expect_exact(select, v, ranks, "whole");
}

TEST(RankSelect, RankGivenAfterTheSamplingPassIsBracketed) {
  // SCE's way: the rank is known only once the first pass has counted the values.
  std::vector<double> v(700001);
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(0, 1);
  for (auto& x : v) x = u(rng) < 0.3 ? 0.0 : u(rng);
  RankSelect select;
  select.keep_at_most(RankSelect::keep_limit(static_cast<i64>(v.size())));
  select.sample_first(static_cast<i64>(v.size()), 1);
  int passes = 0;
  while (select.wants_pass()) {
    select.add(v, 2);
    if (passes == 0) select.ranks({500000});
    select.end_pass();
    ++passes;
  }
  EXPECT_EQ(passes, 2);
  EXPECT_TRUE(select.bracketed());
  expect_exact(select, v, {500000}, "late rank");
}

TEST(RankSelect, PlateauAtTheRankIsCountedNotKept) {
  // 60 % of the values equal: the median's bracket is [x, x], nothing inside, its value at lo.
  std::vector<double> v(2000000);
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] = i % 5 < 3 ? 0.25 : static_cast<double>(i % 977) / 977 - 0.5;
  const std::vector<i64> ranks{1000000, 1999999};
  RankSelect select(ranks);
  select.keep_at_most(RankSelect::keep_limit(static_cast<i64>(v.size())));
  select.sample_first(static_cast<i64>(v.size()), ranks.size());
  const auto o = run_passes(select, v, 1 << 20, 2);
  EXPECT_EQ(o.passes, 2);
  EXPECT_TRUE(o.bracketed);
  expect_exact(select, v, ranks, "plateau");
}

TEST(RankSelect, ASampleUnlikeTheWholeFallsBackToRadixPasses) {
  // The sampled places (one in each group of `stride`: sampled_places) hold the largest values,
  // the rest smaller ones: the brackets miss, and radix passes still give exact values.
  const i64 n = 1 << 20;
  const auto plan = sample_plan(n, 3, RankSelect::keep_limit(n));
  ASSERT_TRUE(plan.on);
  ASSERT_GT(plan.stride, 1);
  std::vector<double> v(static_cast<std::size_t>(n));
  for (i64 i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = static_cast<double>(i % 1000);
  std::vector<i64> places;
  sampled_places(0, n, plan.stride, places);
  ASSERT_EQ(static_cast<i64>(places.size()), n / plan.stride);
  for (const i64 at : places) v[static_cast<std::size_t>(at)] = 1e6 + static_cast<double>(at);
  const std::vector<i64> ranks{n / 4, n / 2, 3 * n / 4};
  RankSelect select(ranks);
  select.keep_at_most(RankSelect::keep_limit(n));
  select.sample_first(n, ranks.size());
  const auto o = run_passes(select, v, 100000, 2);
  EXPECT_FALSE(o.bracketed);
  EXPECT_GT(o.passes, 2);
  EXPECT_LE(o.passes, 6);  // the two sampled ones, then at most four radix passes
  expect_exact(select, v, ranks, "fallen back");
}

// Runs `select` over v in runs of `run` values (add_run), handed to `threads` threads as they
// come free and taken last first, until it has its values.
Outcome run_passes_in_runs(RankSelect& select, const std::vector<double>& v, i64 run, int threads) {
  Outcome o;
  const i64 n = static_cast<i64>(v.size()), runs = (n + run - 1) / run;
  while (select.wants_pass()) {
    select.start_runs(threads);
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (i64 c = runs - 1; c >= 0; --c) {
      const i64 first = c * run, count = std::min(run, n - first);
      select.add_run(omp_get_thread_num(), first, count, [&](i64 at, i64 m, double*) {
        return std::span<const double>(v).subspan(static_cast<std::size_t>(first + at), static_cast<std::size_t>(m));
      });
    }
    select.end_pass();
    ++o.passes;
    if (o.passes > 8) break;
  }
  o.bracketed = select.bracketed();
  return o;
}

TEST(RankSelect, RunsOnThreadsGiveThePiecesValues) {
  // Every way the passes go, the values coming in runs on two threads (arcee_fusion's way): a
  // sample and its brackets, a sample small enough to be whole, a sample unlike the whole (radix
  // passes after it, keeping the few in question), and four radix passes without keeping.
  std::mt19937 rng(9);
  std::lognormal_distribution<double> spread(0.0, 2.0);
  std::vector<double> wide(1200007);
  for (auto& x : wide) x = std::round(spread(rng) * 64) / 64 * (rng() % 5 == 0 ? -1 : 1);
  std::vector<double> small(5000);
  for (std::size_t i = 0; i < small.size(); ++i) small[i] = static_cast<double>((i * 7919) % 1013) - 300;
  const i64 n = 1 << 20;
  const auto plan = sample_plan(n, 3, RankSelect::keep_limit(n));
  ASSERT_TRUE(plan.on);
  std::vector<double> unlike(static_cast<std::size_t>(n));
  for (i64 i = 0; i < n; ++i) unlike[static_cast<std::size_t>(i)] = static_cast<double>(i % 1000);
  std::vector<i64> places;
  sampled_places(0, n, plan.stride, places);
  for (const i64 at : places) unlike[static_cast<std::size_t>(at)] = 1e6 + static_cast<double>(at);
  struct Case {
    std::string name;
    const std::vector<double>* v;
    bool sampled, keeping, bracketed;
  };
  for (const auto& c : {Case{"sampled", &wide, true, true, true}, Case{"whole sample", &small, true, false, true},
                        Case{"fallen back", &unlike, true, true, false}, Case{"radix", &wide, false, false, false}}) {
    const auto& v = *c.v;
    const i64 m = static_cast<i64>(v.size());
    const std::vector<i64> ranks{m / 4, m / 2, 3 * m / 4};
    RankSelect select(ranks);
    if (c.keeping) select.keep_at_most(RankSelect::keep_limit(m));
    if (c.sampled) select.sample_first(m, ranks.size());
    const auto o = run_passes_in_runs(select, v, 16384, 2);
    EXPECT_EQ(o.bracketed, c.bracketed) << c.name;
    if (c.name == "sampled") EXPECT_EQ(o.passes, 2);
    if (c.name == "radix") EXPECT_EQ(o.passes, 4);
    expect_exact(select, v, ranks, c.name + " in runs");
  }
}

TEST(RankSelect, SamplePlanStaysWithinTheKeepLimit) {
  for (const i64 n : {i64{1} << 18, (i64{1} << 18) + 1, i64{5} << 20, i64{45} << 20, i64{131} << 20,
                      i64{1} << 29, i64{1} << 31}) {
    for (const std::size_t ranks : {std::size_t{1}, std::size_t{3}}) {
      const auto plan = sample_plan(n, ranks, RankSelect::keep_limit(n));
      if (n <= (i64{1} << 18)) {
        EXPECT_TRUE(plan.on && plan.stride == 1) << n;
        continue;
      }
      if (!plan.on) continue;
      EXPECT_LE(plan.size * 8, i64{32} << 20) << n;  // the sample's keys
      EXPECT_GE(plan.stride, 2) << n;
    }
  }
  EXPECT_TRUE(
      sample_plan(i64{131} << 20, 3, RankSelect::keep_limit(i64{131} << 20)).on);  // a 7b embedding
  EXPECT_FALSE(
      sample_plan(i64{1} << 31, 3, RankSelect::keep_limit(i64{1} << 31)).on);  // radix passes
  EXPECT_FALSE(sample_plan(1000, 9, RankSelect::keep_limit(1000)).on);         // too many ranks
}

}  // namespace
}  // namespace revmerge
