// merge_store (--method auto | rank) → bundle version 2 → revert: each representation exact at
// full size, the manifest's errors equal to dense ones, the budget kept, auto no worse than
// either representation alone, the objectives and bounds kept, and bad budgets refused by name.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <random>

#include "methods/adapter_writer.hpp"
#include "revmerge/error.hpp"
#include "revmerge/store.hpp"
#include "store_fixtures.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using namespace store_fixtures;

TEST(StoreMerge, RankAtFullStorageRevertsEveryDeltaExactly) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  auto o = store_options(tasks, StoreMethod::rank, tmp / "bundle");
  o.storage.fraction = 1.0;
  const auto man = merge_store(o);
  EXPECT_EQ(man.format_version, 2);
  EXPECT_EQ(man.method, "rank");
  for (const auto& mod : man.modules) {
    EXPECT_EQ(mod.representation, Representation::rank);
    for (const auto e : mod.delta_error) EXPECT_LT(e, 1e-5) << mod.path;
  }
  EXPECT_LT(check_errors_are_dense_errors(tmp / "bundle", tasks), 1e-5);
}

TEST(StoreMerge, ManifestErrorsAreTheDenseErrorsOfTheRevertedTasks) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  for (const auto method : {StoreMethod::rank, StoreMethod::automatic})
    for (const double b : {0.2, 0.45}) {
      const auto out = tmp / ("b" + std::to_string(int(method)) + "-" + std::to_string(b));
      auto o = store_options(tasks, method, out);
      o.storage.fraction = b;
      merge_store(o);
      const double worst = check_errors_are_dense_errors(out, tasks);
      EXPECT_GT(worst, 1e-3);  // truncated: the comparison measured something
    }
  EXPECT_GT(rmm_checked, 0);  // auto chose RMM somewhere: its factor errors were compared too
}

TEST(StoreMerge, Bf16StorageErrorsDescribeTheRoundedFactors) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  auto o = store_options(tasks, StoreMethod::automatic, tmp / "bundle");
  o.storage.fraction = 0.6;
  o.dtype = DType::BF16;
  const auto man = merge_store(o);
  EXPECT_EQ(Bundle(tmp / "bundle").tensors().find(bundle_tensor_name(man.modules[0].path, "lora_A",
                                                                     man.modules[0].representation == Representation::rank ? "factors" : "mean"))->info->dtype,
            DType::BF16);
  check_errors_are_dense_errors(tmp / "bundle", tasks);
}

TEST(StoreMerge, StorageNeverExceedsTheBudget) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  for (const auto method : {StoreMethod::rank, StoreMethod::automatic})
    for (const double b : {0.05, 0.3, 0.56, 0.9}) {
      auto o = store_options(tasks, method, tmp / "out");
      o.storage.fraction = b;
      o.overwrite = true;
      const auto man = merge_store(o);
      EXPECT_LE(stored_numbers(man), b * all_numbers(man) + 1e-9) << b;
      EXPECT_NEAR(man.storage_ratio, stored_numbers(man) / all_numbers(man), 1e-12);
      // The greedy fill leaves less than one direction of the largest module unused.
      if (method == StoreMethod::rank) EXPECT_GT(stored_numbers(man), b * all_numbers(man) - 56);
    }
  // A budget in bytes: of the stored dtype (f32 here).
  auto o = store_options(tasks, StoreMethod::automatic, tmp / "bytes");
  o.storage.bytes = 6000;
  const auto man = merge_store(o);
  EXPECT_LE(man.stored_bytes, 6000u);
  EXPECT_LE(stored_numbers(man) * 4, 6000);
}

TEST(StoreMerge, AutoIsNoWorseThanEitherRepresentationAloneAndChoosesPerModule) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  // RMM at P = 1 everywhere stores (p(r + n) + r) / (n r) = 36 / 64 of the numbers.
  RmmMergeOptions r;
  r.tasks = tasks;
  r.basis = 1;
  r.out = tmp / "rmm";
  r.device = Device::cpu;
  const auto rmm = merge_rmm(r);
  const double b = rmm.storage_ratio;
  EXPECT_NEAR(b, 36.0 / 64.0, 1e-12);
  auto o = store_options(tasks, StoreMethod::rank, tmp / "rank");
  o.storage.fraction = b;
  const auto rank = merge_store(o);
  o = store_options(tasks, StoreMethod::automatic, tmp / "auto");
  o.storage.fraction = b;
  const auto aut = merge_store(o);
  const double e_rmm = objective(rmm), e_rank = objective(rank), e_auto = objective(aut);
  EXPECT_LE(e_auto, 1.01 * std::min(e_rmm, e_rank)) << e_auto << " rmm " << e_rmm << " rank " << e_rank;
  // Both representations lose somewhere: the family is mixed, so auto beats both clearly.
  EXPECT_LT(e_auto, 0.9 * std::min(e_rmm, e_rank));
  // The trained-like modules are truncated; a shared basis (RMM or shared rows) serves at least
  // one shared-init module.
  int shared_modules = 0;
  for (const auto& mod : aut.modules) {
    const bool v = mod.path.find("v_proj") != std::string::npos;
    if (!v) EXPECT_EQ(mod.representation, Representation::rank) << mod.path;
    shared_modules += mod.representation != Representation::rank;
  }
  EXPECT_GE(shared_modules, 1);
  // RMM and truncations alone: still no worse than either.
  o = store_options(tasks, StoreMethod::automatic, tmp / "auto-rmm");
  o.storage.fraction = b;
  o.representations = {Representation::rmm, Representation::rank};
  const auto rmm_rank = merge_store(o);
  EXPECT_LE(objective(rmm_rank), 1.01 * std::min(e_rmm, e_rank));
  EXPECT_LE(e_auto, 1.01 * objective(rmm_rank));
  std::cout << "objective at storage " << b << ": auto " << e_auto << ", rmm P=1 " << e_rmm
            << ", rank " << e_rank << "\n";
  EXPECT_LE(stored_numbers(aut), b * all_numbers(aut) + 1e-9);
}

// On every generated family and at budgets from tight to loose, auto is within 1 % of each
// representation allocated alone (and so of the best of them) — RMM with a P per side, the
// truncations, the row basis, the row and column bases — and never above the budget.
TEST(StoreMerge, AutoIsWithinOnePercentOfEveryRepresentationAloneOnEveryFamily) {
  test::TempDir tmp;
  const std::vector<std::pair<std::string, std::vector<TaskSource>>> families = {
      {"mixed", write_family(tmp / "mixed")},
      {"shared A", write_shared_a_family(tmp / "shared-a")},
      {"shared A and columns", write_shared_columns_family(tmp / "shared-columns")}};
  const std::vector<std::vector<Representation>> alone = {
      {Representation::rmm}, {Representation::rank}, {Representation::shared_rows}, {Representation::shared}};
  int beaten = 0;  // cases where auto is clearly better than the best single representation
  for (const auto& [name, tasks] : families)
    for (const double b : {0.15, 0.35, 0.6}) {
      auto o = store_options(tasks, StoreMethod::automatic, tmp / "auto");
      o.storage.fraction = b;
      o.overwrite = true;
      const auto aut = merge_store(o);
      EXPECT_LE(stored_numbers(aut), b * all_numbers(aut) + 1e-9) << name << " at " << b;
      double best = INFINITY;
      for (const auto& reps : alone) {
        o.representations = reps;
        const double e = objective(merge_store(o));
        SCOPED_TRACE(::testing::Message() << name << " at " << b << ", " << representation_name(reps[0]) << " alone " << e);
        EXPECT_LE(objective(aut), 1.01 * e);
        best = std::min(best, e);
      }
      beaten += objective(aut) < 0.95 * best;
    }
  EXPECT_GT(beaten, 0);  // mixing representations across modules pays somewhere
}

// Tasks that share their A almost exactly and differ in B: RMM keeps A's mean alone (P = 0) and
// spends on B — a P per side — and the errors of such pairs are still the dense ones.
TEST(StoreMerge, RmmTakesABasisSizePerSide) {
  test::TempDir tmp;
  const auto tasks = write_shared_a_family(tmp.path());
  auto o = store_options(tasks, StoreMethod::automatic, tmp / "bundle");
  o.storage.fraction = 0.62;
  o.representations = {Representation::rmm};  // a shared row basis would serve these best
  const auto man = merge_store(o);
  int per_side = 0;  // modules keeping A's mean alone
  for (const auto& mod : man.modules) {
    ASSERT_EQ(mod.representation, Representation::rmm) << mod.path;
    EXPECT_LT(mod.basis[0], mod.basis[1]) << mod.path;  // B's basis is where the budget goes
    per_side += mod.basis[0] == 0;  // A's mean alone is every task's A
    for (const auto e : mod.delta_error) EXPECT_LT(e, 0.6) << mod.path;
  }
  EXPECT_GT(per_side, 0);
  EXPECT_FALSE(Bundle(tmp / "bundle").tensors().find(bundle_tensor_name(man.modules[0].path, "lora_A", "basis")));
  check_errors_are_dense_errors(tmp / "bundle", tasks);
  EXPECT_EQ(parse_manifest(manifest_to_json(man), "m.json").modules[0].basis, man.modules[0].basis);
}

// Task 0's deltas have a flat spectrum, the others' decay fast: the mean objective spends on
// the easy tasks, the max objective evens out the worst task's error.
TEST(StoreMerge, MaxObjectiveLowersTheWorstTask) {
  test::TempDir tmp;
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  std::vector<TaskSource> tasks;
  for (i64 t = 0; t < kTasks; ++t) {
    std::map<std::string, std::vector<float>> a, b;
    const double decay = t == 0 ? 0.95 : 0.5;
    for (const auto& m : kModules) {
      for (i64 i = 0; i < m.rank * m.in; ++i) a[m.path].push_back(g(rng));
      for (i64 o = 0; o < m.out; ++o)
        for (i64 k = 0; k < m.rank; ++k) b[m.path].push_back(float(std::pow(decay, double(k))) * g(rng));
    }
    const auto dir = tmp / ("task" + std::to_string(t));
    test::write_adapter_factors(dir, kRank, kModules, a, b);
    tasks.push_back({"task" + std::to_string(t), dir});
  }
  const auto task_errors = [](const BundleManifest& m) {
    std::vector<double> e;
    for (std::size_t t = 0; t < m.tasks.size(); ++t) {
      double num = 0, den = 0;
      for (const auto& mod : m.modules)
        num += std::pow(mod.delta_error[t] * mod.delta_norm[t], 2), den += std::pow(mod.delta_norm[t], 2);
      e.push_back(std::sqrt(num / den));
    }
    return e;
  };
  for (const auto method : {StoreMethod::rank, StoreMethod::automatic}) {
    auto o = store_options(tasks, method, tmp / "mean");
    o.storage.fraction = 0.3;
    const auto mean = merge_store(o);
    o.out = tmp / "max";
    o.objective = StoreObjective::max;
    const auto max = merge_store(o);
    const auto em = task_errors(mean), ex = task_errors(max);
    const double worst_mean = *std::max_element(em.begin(), em.end());
    const double worst_max = *std::max_element(ex.begin(), ex.end());
    EXPECT_LT(worst_max, 0.9 * worst_mean);
    EXPECT_LE(objective(mean), objective(max) * (1 + 1e-9));  // each wins its own objective
    EXPECT_LE(stored_numbers(max), 0.3 * all_numbers(max) + 1e-9);
    std::cout << "worst task error at storage 0.3: objective mean " << worst_mean << ", max " << worst_max << "\n";
    std::filesystem::remove_all(tmp / "mean");
    std::filesystem::remove_all(tmp / "max");
  }
  auto bad = store_options(tasks, StoreMethod::automatic, tmp / "bad");
  bad.max_error = 0.1;
  bad.objective = StoreObjective::max;
  EXPECT_THROW(merge_store(bad), usage_error);
  EXPECT_THROW(parse_store_objective("median", "--objective"), usage_error);
}

TEST(StoreMerge, MaxErrorBoundsEveryTaskInEveryModule) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  for (const double bound : {0.05, 0.3}) {
    auto o = store_options(tasks, StoreMethod::automatic, tmp / "out");
    o.max_error = bound;
    o.overwrite = true;
    const auto man = merge_store(o);
    for (const auto& mod : man.modules)
      for (const auto e : mod.delta_error) EXPECT_LE(e, bound * (1 + 1e-6) + 1e-6) << mod.path;
    EXPECT_LT(man.storage_ratio, 1.0);
  }
}

TEST(StoreMerge, BadBudgetsAreRefusedNamingTheOption) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  const auto refused = [&](StoreMergeOptions o, const std::string& needle) {
    try {
      merge_store(o);
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const usage_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(std::filesystem::exists(o.out));
  };
  auto o = store_options(tasks, StoreMethod::automatic, tmp / "out");
  refused(o, "--storage");  // neither budget nor bound
  o.storage.fraction = 0.5;
  o.max_error = 0.1;
  refused(o, "either --storage");
  o.max_error.reset();
  o.storage.fraction = 1.5;
  refused(o, "--storage");
  o.storage.fraction = 0.0;
  refused(o, "--storage");
  o.storage = {};
  o.storage.bytes = 1ull << 40;
  refused(o, "more than storing every task");
  o.storage = {};
  o.max_error = -0.1;
  refused(o, "--max-error");
  o = store_options(tasks, StoreMethod::rank, tmp / "out");
  o.storage.fraction = 0.5;
  o.rmm_basis = {1};
  refused(o, "--basis");
  o = store_options(tasks, StoreMethod::automatic, tmp / "out");
  o.storage.fraction = 0.5;
  o.rmm_basis = {4};
  refused(o, "--basis 4");

  EXPECT_EQ(*parse_storage_budget("0.25", "--storage").fraction, 0.25);
  EXPECT_EQ(*parse_storage_budget("25%", "--storage").fraction, 0.25);
  EXPECT_EQ(*parse_storage_budget("2KiB", "--storage").bytes, 2048u);
  for (const char* bad : {"", "0", "1.5", "150%", "2 parsecs", "-0.5", "abc"})
    EXPECT_THROW(parse_storage_budget(bad, "--storage"), usage_error) << bad;
}

TEST(StoreMerge, ManifestVersion2RoundTripsAndRefusesBadKeptRanks) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  auto o = store_options(tasks, StoreMethod::automatic, tmp / "bundle");
  o.storage.fraction = 0.5;
  const auto man = merge_store(o);
  const auto text = manifest_to_json(man);
  const auto back = parse_manifest(text, "m.json");
  EXPECT_EQ(manifest_to_json(back), text);
  // A kept rank above the task's own rank is refused by name.
  auto broken = man;
  for (auto& mod : broken.modules)
    if (mod.representation == Representation::rank) {
      mod.kept_ranks[0] = mod.task_ranks[0] + 1;
      break;
    }
  EXPECT_THROW(parse_manifest(manifest_to_json(broken), "m.json"), format_error);
}

}  // namespace
}  // namespace revmerge
