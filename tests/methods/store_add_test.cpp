// `revmerge add` (add_tasks): new tasks join a bundle without touching its tasks' bytes, within
// the module's error, and bad additions are refused and write nothing.
#include <gtest/gtest.h>

#include <cmath>

#include "revmerge/error.hpp"
#include "revmerge/store.hpp"
#include "store_fixtures.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using namespace store_fixtures;

// revmerge add: the old tasks' bytes untouched, the new tasks within the modules' errors, again
// and again, from either format version.
TEST(StoreAdd, NewTasksJoinWithoutTouchingTheOldOnes) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  const std::vector<TaskSource> first(tasks.begin(), tasks.begin() + 2);
  auto o = store_options(first, StoreMethod::automatic, tmp / "two");
  o.storage.fraction = 0.5;
  const auto two = merge_store(o);
  AddTasksOptions add;
  add.bundle = tmp / "two";
  add.tasks = {tasks[2]};
  add.out = tmp / "three";
  const auto three = add_tasks(add);
  add.bundle = tmp / "three";
  add.tasks = {tasks[3]};
  add.out = tmp / "four";
  const auto four = add_tasks(add);
  EXPECT_EQ(four.base_tasks, 2);
  ASSERT_EQ(four.tasks.size(), 4u);
  const Bundle b2(tmp / "two"), b3(tmp / "three"), b4(tmp / "four");
  // Every tensor of the first bundle is in the last one, byte for byte.
  for (const auto& [file, info] : b2.tensors().tensors()) {
    const auto* later = b4.tensors().find(info->name);
    ASSERT_NE(later, nullptr) << info->name;
    const auto x = file->bytes(*info), y = later->file->bytes(*later->info);
    EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << info->name;
  }
  for (std::size_t m = 0; m < four.modules.size(); ++m) {
    const auto& mod = four.modules[m];
    // Old tasks revert to the same bits; task 2 the same after the second add.
    for (i64 t = 0; t < 2; ++t) EXPECT_EQ(revert_module(b4, m, t).a, revert_module(b2, m, t).a);
    EXPECT_EQ(revert_module(b4, m, 2).b, revert_module(b3, m, 2).b);
    // New tasks within the module's worst error before them (rounding aside).
    double target = 0;
    for (const double e : two.modules[m].delta_error) target = std::max(target, e);
    for (i64 t = 2; t < 4; ++t) EXPECT_LE(mod.delta_error[t], target + 1e-6) << mod.path;
    EXPECT_EQ(mod.added_kept_ranks.size(), 2u);
  }
  check_errors_are_dense_errors(tmp / "four", tasks);
  EXPECT_EQ(manifest_to_json(parse_manifest(manifest_to_json(four), "m.json")), manifest_to_json(four));

  // A version 1 bundle takes tasks too; an explicit bound holds.
  RmmMergeOptions r;
  r.tasks = first;
  r.basis = 1;
  r.out = tmp / "v1";
  r.device = Device::cpu;
  merge_rmm(r);
  add.bundle = tmp / "v1";
  add.tasks = {tasks[2], tasks[3]};
  add.out = tmp / "v1-four";
  add.max_error = 0.02;
  const auto v1 = add_tasks(add);
  EXPECT_EQ(v1.format_version, 2);
  EXPECT_EQ(v1.base_tasks, 2);
  for (const auto& mod : v1.modules)
    for (i64 t = 2; t < 4; ++t) EXPECT_LE(mod.delta_error[t], 0.02 + 1e-6);
  check_errors_are_dense_errors(tmp / "v1-four", tasks);
}

TEST(StoreAdd, BadAdditionsAreRefusedAndWriteNothing) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  auto o = store_options({tasks[0], tasks[1]}, StoreMethod::rank, tmp / "b");
  o.storage.fraction = 0.5;
  merge_store(o);
  const auto refused = [&](AddTasksOptions a, const std::string& needle) {
    try {
      add_tasks(a);
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(std::filesystem::exists(a.out));
  };
  AddTasksOptions a;
  a.bundle = tmp / "b";
  a.out = tmp / "out";
  a.tasks = {tasks[1]};
  refused(a, "task1");  // already in the bundle
  a.tasks = {{"other", std::filesystem::path(REVMERGE_SOURCE_DIR) / "tests/fixtures/peft/plain"}};
  refused(a, "the adapters adapt a 32 × 32 weight, the bundle a 24 × 32 one");
  a.tasks = {tasks[2]};
  a.max_error = 1.5;
  refused(a, "--max-error");
  a.max_error.reset();
  a.out = tmp / "b";  // the bundle itself, without overwrite
  const auto before = test::read_bytes(tmp / "b" / kBundleManifestName);
  EXPECT_THROW(add_tasks(a), error);
  EXPECT_EQ(test::read_bytes(tmp / "b" / kBundleManifestName), before);
  // With overwrite the bundle may be updated in place, but neither a new task's folder nor a
  // folder holding the bundle is replaced.
  a.overwrite = true;
  const auto adapter = test::read_bytes(tasks[2].adapter / kAdapterWeightsName);
  for (const auto& [out, needle] :
       {std::pair{tasks[2].adapter, "it is an input"}, {tmp.path(), "it holds an input"}}) {
    a.out = out;
    try {
      add_tasks(a);
      ADD_FAILURE() << "accepted: --out " << out;
    } catch (const usage_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(test::read_bytes(tasks[2].adapter / kAdapterWeightsName), adapter);
  EXPECT_EQ(test::read_bytes(tmp / "b" / kBundleManifestName), before);
  a.out = tmp / "b";
  EXPECT_EQ(add_tasks(a).tasks.size(), 3u);
}

}  // namespace
}  // namespace revmerge
