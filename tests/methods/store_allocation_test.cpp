// The store's budget allocation against exhaustive search, and its workers' thread counts.
#include <gtest/gtest.h>

#include <omp.h>

#include <cmath>
#include <random>

#include "methods/store/allocation.hpp"
#include "methods/store/local_workers.hpp"
#include "methods/store/parallel_tasks.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// The allocation against every combination of choices on a small case.
TEST(StoreAllocation, BudgetChoiceMatchesExhaustiveSearchOnConvexOptions) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(0.1, 1.0);
  std::vector<ModuleOptions> modules(3);
  for (auto& m : modules) {
    m.rank_unit = 10 + 5 * (&m - modules.data());
    m.task_weight = {1.0, 0.5};
    for (int t = 0; t < 2; ++t) {
      std::vector<double> s;
      double v = u(rng);
      for (int k = 0; k < 3; ++k) s.push_back(v), v *= u(rng);
      m.sigma_sq.push_back(s);
    }
  }
  for (const double budget : {0.0, 15.0, 40.0, 75.0, 120.0, 500.0}) {
    const auto got = allocate_budget(modules, budget);
    double used = 0, err = 0;
    for (const auto& c : got) used += c.numbers, err += c.error;
    EXPECT_LE(used, budget + 1e-9);
    // Exhaustive: each of 6 tasks keeps 0..3 directions.
    double best = INFINITY;
    for (int code = 0; code < 4096; ++code) {
      double n = 0, e = 0;
      int c = code;
      for (int m = 0; m < 3; ++m)
        for (int t = 0; t < 2; ++t) {
          const int k = c % 4;
          c /= 4;
          n += k * modules[m].rank_unit;
          for (int j = k; j < 3; ++j) e += modules[m].task_weight[t] * modules[m].sigma_sq[t][j];
        }
      if (n <= budget) best = std::min(best, e);
    }
    // Greedy by value per number is optimal up to the last direction that does not fit.
    EXPECT_LE(err, best + 0.35) << budget;
    if (budget == 0.0 || budget == 500.0) EXPECT_NEAR(err, best, 1e-12);
  }
}

TEST(StoreAllocation, FixedOptionTakenWhereItIsWorthItsNumbers) {
  ModuleOptions m;
  m.rank_unit = 10;
  m.task_weight = {1.0};
  m.sigma_sq = {{1.0, 1.0, 1.0, 1.0}};  // flat: truncation loses 1 per 10 numbers saved
  m.fixed = {{20, 0.1, 0.1}};           // 20 numbers for error 0.1
  const auto c = allocate_budget({m}, 20);
  EXPECT_EQ(c[0].fixed, 0);
  EXPECT_DOUBLE_EQ(c[0].error, 0.1);
  const auto d = allocate_budget({m}, 19);
  EXPECT_EQ(d[0].fixed, -1);
  EXPECT_EQ(d[0].kept, std::vector<i64>{1});
  const auto e = allocate_max_error({m}, 0.5);  // √(0.1 / 4) ≤ 0.5 → the fixed option
  EXPECT_EQ(e[0].fixed, 0);
}

// The multiplier settles where module B's small fixed option beats its whole truncation, which
// does not fit beside A; the numbers left would hold B's truncation to two directions, which
// loses less than the fixed option: B chooses again within them.
TEST(StoreAllocation, AModuleChoosesAgainWithinTheNumbersTheOthersLeave) {
  ModuleOptions a;
  a.rank_unit = 5;
  a.task_weight = {1.0};
  a.sigma_sq = {{100.0}};
  ModuleOptions b;
  b.rank_unit = 4;
  b.task_weight = {1.0};
  b.sigma_sq = {{1.0, 1.0, 1.0}};
  b.fixed = {{2, 1.2, 0.6}};  // 2 numbers for error 1.2: what λ ≈ 0.12 chooses
  const auto c = allocate_budget({a, b}, 16);
  EXPECT_EQ(c[0].kept, std::vector<i64>{1});
  EXPECT_EQ(c[1].fixed, -1);
  EXPECT_EQ(c[1].kept, std::vector<i64>{2});  // 8 of the 11 numbers A leaves, error 1 < 1.2
  EXPECT_DOUBLE_EQ(c[1].error, 1.0);
  EXPECT_LE(c[0].numbers + c[1].numbers, 16);
}

// The multiplier jumps at λ = 0.12, where B's small fixed option beats its whole truncation;
// just above it A keeps both directions (0.13 a number) and B the fixed option, error 1.2. A
// giving up its second direction (0.65) frees what B's whole truncation needs (error 0): B
// takes it, A pays, 0.65 in all.
TEST(StoreAllocation, AModuleGivesUpDirectionsWhereAnotherSavesMoreWithThem) {
  ModuleOptions a;
  a.rank_unit = 5;
  a.task_weight = {1.0};
  a.sigma_sq = {{100.0, 0.65}};
  ModuleOptions b;
  b.rank_unit = 4;
  b.task_weight = {1.0};
  b.sigma_sq = {{1.0, 1.0, 1.0}};
  b.fixed = {{2, 1.2, 0.6}};
  const auto c = allocate_budget({a, b}, 17);
  EXPECT_EQ(c[0].kept, std::vector<i64>{1});
  EXPECT_EQ(c[1].fixed, -1);
  EXPECT_EQ(c[1].kept, std::vector<i64>{3});
  EXPECT_NEAR(c[0].error + c[1].error, 0.65, 1e-12);
  EXPECT_LE(c[0].numbers + c[1].numbers, 17);
}

// A store worker's thread count (what its BLAS calls use) holds while the guard lives and is
// restored after: two workers each running OpenBLAS on every core spin against each other.
TEST(StoreThreads, AWorkersThreadCountHoldsForItsGuardAndIsRestored) {
  const int before = omp_get_max_threads();
  {
    const ThreadsOfThisThread one(1);
    EXPECT_EQ(omp_get_max_threads(), 1);
    {
      const ThreadsOfThisThread unchanged(0);
      EXPECT_EQ(omp_get_max_threads(), 1);
    }
    EXPECT_EQ(omp_get_max_threads(), 1);
  }
  EXPECT_EQ(omp_get_max_threads(), before);
}

TEST(StoreWorkers, OneGpuIsSharedByAWorkerPerFourCoresAndSixteenGibUpToFour) {
  constexpr std::uint64_t GiB = std::uint64_t{1} << 30;
  EXPECT_EQ(4, gpu_store_workers(16, 141 * GiB));  // the H200 machine: four
  EXPECT_EQ(4, gpu_store_workers(64, 141 * GiB));  // never more than four
  EXPECT_EQ(2, gpu_store_workers(8, 80 * GiB));    // the cores bound it
  EXPECT_EQ(1, gpu_store_workers(16, 24 * GiB));   // the memory bounds it
  EXPECT_EQ(2, gpu_store_workers(16, 32 * GiB));
  EXPECT_EQ(1, gpu_store_workers(2, 141 * GiB));   // a small machine: one, as before
  EXPECT_EQ(1, gpu_store_workers(16, 0));          // memory unknown: one
}

}  // namespace

}  // namespace revmerge
