// The C interface (revmerge/revmerge.h) against the C++ API on the same inputs: the same bundle
// merged, the same tasks, modules and rebuilt factors, the same adapter written, and failures
// as statuses with messages naming what is wrong.
#include "revmerge/revmerge.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "methods/adapter_writer.hpp"
#include "revmerge/bundle.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/version.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

// Three adapters of two layers, merged with P = 2 on the CPU.
std::filesystem::path merged_bundle(const test::TempDir& tmp) {
  std::vector<test::ModuleSpec> modules;
  for (int l = 0; l < 2; ++l)
    for (const auto& [name, in, out] :
         {std::tuple{"self_attn.q_proj", 12, 10}, std::tuple{"self_attn.v_proj", 16, 12}})
      modules.push_back({"model.layers." + std::to_string(l) + "." + name, 4, in, out});
  RmmMergeOptions o;
  for (int t = 0; t < 3; ++t) {
    const auto a =
        test::write_adapter(tmp / ("task" + std::to_string(t)), 4, 8, modules, "", 50 + t);
    o.tasks.push_back({a.dir.filename(), a.dir});
  }
  o.basis = 2;
  o.out = tmp / "bundle";
  o.device = Device::cpu;
  merge_rmm(o);
  return o.out;
}

TEST(CApi, ListsAndRevertsAsTheCppApi) {
  test::TempDir tmp;
  const auto dir = merged_bundle(tmp);
  const Bundle cpp(dir);
  revmerge_bundle* b = nullptr;
  ASSERT_EQ(revmerge_bundle_open(dir.c_str(), &b), REVMERGE_OK) << revmerge_last_error();
  EXPECT_STREQ(revmerge_version(), REVMERGE_VERSION_STRING);
  ASSERT_EQ(revmerge_bundle_task_count(b), 3);
  for (int64_t t = 0; t < 3; ++t) {
    EXPECT_EQ(revmerge_bundle_task_name(b, t), cpp.manifest().tasks[t].name);
    EXPECT_EQ(revmerge_bundle_task_index(b, revmerge_bundle_task_name(b, t)), t);
  }
  EXPECT_EQ(revmerge_bundle_task_name(b, 3), nullptr);
  EXPECT_EQ(revmerge_bundle_task_index(b, "nobody"), -1);
  ASSERT_EQ(revmerge_bundle_module_count(b), 4);
  for (int64_t m = 0; m < 4; ++m) {
    revmerge_module_info info{};
    ASSERT_EQ(revmerge_bundle_module(b, m, &info), REVMERGE_OK);
    const auto& want = cpp.manifest().modules[m];
    EXPECT_EQ(info.path, want.path);
    EXPECT_EQ(info.layer, want.layer);
    EXPECT_EQ(info.in, want.in);
    EXPECT_EQ(info.out, want.out);
    EXPECT_EQ(info.rank, want.rank);
    for (int64_t t = 0; t < 3; ++t) {
      std::vector<float> a(info.rank * info.in), bb(info.out * info.rank);
      ASSERT_EQ(revmerge_revert_module(b, m, t, REVMERGE_DEVICE_CPU, a.data(), bb.data()),
                REVMERGE_OK);
      const auto r = revert_module(cpp, m, t);
      EXPECT_EQ(a, r.a) << info.path << " task " << t;
      EXPECT_EQ(bb, r.b) << info.path << " task " << t;
    }
  }
  // A task as an adapter: the bytes `revert_task` writes.
  ASSERT_EQ(revmerge_revert_task(b, "task1", (tmp / "c").c_str(), 0, REVMERGE_DEVICE_CPU),
            REVMERGE_OK)
      << revmerge_last_error();
  revert_task(cpp, "task1", tmp / "cpp", {});
  EXPECT_EQ(test::read_bytes(tmp / "c" / "adapter_model.safetensors"),
            test::read_bytes(tmp / "cpp" / "adapter_model.safetensors"));
  EXPECT_EQ(PeftAdapter(tmp / "c").modules().size(), 4u);
  revmerge_bundle_close(b);
  revmerge_bundle_close(nullptr);
}

TEST(CApi, MergesAsTheCppApi) {
  test::TempDir tmp;
  const auto dir = merged_bundle(tmp);  // task0..2 merged with P = 2 by merge_rmm
  std::vector<std::string> paths;
  for (int t = 0; t < 3; ++t) paths.push_back((tmp / ("task" + std::to_string(t)) / "").string());
  const char* adapters[] = {paths[0].c_str(), paths[1].c_str(), paths[2].c_str()};
  ASSERT_EQ(
      revmerge_merge_rmm(adapters, nullptr, 3, 2, (tmp / "c").c_str(), 0, REVMERGE_DEVICE_CPU),
      REVMERGE_OK)
      << revmerge_last_error();
  EXPECT_EQ(test::read_bytes(tmp / "c" / kBundleTensorsName),
            test::read_bytes(dir / kBundleTensorsName));
  EXPECT_EQ(Bundle(tmp / "c").manifest().tasks[2].name, "task2");
  const char* names[] = {"a", "b", "c"};
  ASSERT_EQ(
      revmerge_merge_rmm(adapters, names, 3, 1, (tmp / "named").c_str(), 0, REVMERGE_DEVICE_CPU),
      REVMERGE_OK);
  EXPECT_EQ(Bundle(tmp / "named").manifest().tasks[1].name, "b");
  // A basis outside 1 .. n − 1 is refused by name, and nothing is written.
  EXPECT_EQ(
      revmerge_merge_rmm(adapters, nullptr, 3, 3, (tmp / "bad").c_str(), 0, REVMERGE_DEVICE_CPU),
      REVMERGE_USAGE_ERROR);
  EXPECT_NE(std::string(revmerge_last_error()).find("--basis 3"), std::string::npos)
      << revmerge_last_error();
  EXPECT_FALSE(std::filesystem::exists(tmp / "bad"));
  // An existing output is kept.
  const auto before = test::read_bytes(tmp / "c" / kBundleTensorsName);
  EXPECT_NE(
      revmerge_merge_rmm(adapters, nullptr, 3, 1, (tmp / "c").c_str(), 0, REVMERGE_DEVICE_CPU),
      REVMERGE_OK);
  EXPECT_NE(std::string(revmerge_last_error()).find((tmp / "c").string()), std::string::npos)
      << revmerge_last_error();
  EXPECT_EQ(test::read_bytes(tmp / "c" / kBundleTensorsName), before);
}

TEST(CApi, StoresUnderABudgetAndRevertsEveryRepresentation) {
  test::TempDir tmp;
  merged_bundle(tmp);  // writes task0..2
  std::vector<std::string> paths;
  for (int t = 0; t < 3; ++t) paths.push_back((tmp / ("task" + std::to_string(t))).string());
  const char* adapters[] = {paths[0].c_str(), paths[1].c_str(), paths[2].c_str()};
  ASSERT_EQ(revmerge_merge_auto(adapters, nullptr, 3, 0.5, 0, (tmp / "auto").c_str(), 0,
                                REVMERGE_DEVICE_CPU),
            REVMERGE_OK)
      << revmerge_last_error();
  ASSERT_EQ(revmerge_merge_auto(adapters, nullptr, 3, 0.5, 1, (tmp / "rank").c_str(), 0,
                                REVMERGE_DEVICE_CPU),
            REVMERGE_OK)
      << revmerge_last_error();
  EXPECT_EQ(Bundle(tmp / "rank").manifest().method, "rank");
  for (const auto* name : {"auto", "rank"}) {
    const Bundle cpp(tmp / name);
    EXPECT_EQ(cpp.manifest().format_version, 2);
    EXPECT_LE(cpp.manifest().storage_ratio, 0.5);
    revmerge_bundle* b = nullptr;
    ASSERT_EQ(revmerge_bundle_open((tmp / name).c_str(), &b), REVMERGE_OK) << revmerge_last_error();
    for (int64_t m = 0; m < revmerge_bundle_module_count(b); ++m) {
      const auto& mod = cpp.manifest().modules[m];
      std::vector<float> a(mod.rank * mod.in), bb(mod.out * mod.rank);
      ASSERT_EQ(revmerge_revert_module(b, m, 1, REVMERGE_DEVICE_CPU, a.data(), bb.data()), REVMERGE_OK);
      const auto want = revert_module(cpp, m, 1, Device::cpu);
      EXPECT_EQ(a, want.a);
      EXPECT_EQ(bb, want.b);
    }
    revmerge_bundle_close(b);
  }
  // A budget outside (0, 1] is refused by name, and nothing is written.
  EXPECT_EQ(revmerge_merge_auto(adapters, nullptr, 3, 1.5, 0, (tmp / "bad").c_str(), 0,
                                REVMERGE_DEVICE_CPU),
            REVMERGE_USAGE_ERROR);
  EXPECT_NE(std::string(revmerge_last_error()).find("--storage"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(tmp / "bad"));
}

// A resident bundle through the C interface: every task's modules in one call, the bits of
// revmerge_revert_module; a subset; refusals with messages.
TEST(CApi, DeviceBundleMaterializesAsRevert) {
  test::TempDir tmp;
  const auto dir = merged_bundle(tmp);
  revmerge_bundle* b = nullptr;
  revmerge_device_bundle* d = nullptr;
  ASSERT_EQ(revmerge_bundle_open(dir.c_str(), &b), REVMERGE_OK);
  ASSERT_EQ(revmerge_device_bundle_open(dir.c_str(), REVMERGE_DEVICE_CPU, &d), REVMERGE_OK) << revmerge_last_error();
  EXPECT_EQ(revmerge_device_bundle_on_host(d), 1);
  EXPECT_GT(revmerge_device_bundle_memory(d), 0u);
  ASSERT_EQ(revmerge_device_bundle_task_count(d), 3);
  EXPECT_EQ(revmerge_device_bundle_task_index(d, "task1"), 1);
  const int64_t nm = revmerge_device_bundle_module_count(d);
  ASSERT_EQ(nm, 4);
  std::vector<std::vector<float>> a(nm), bb(nm);
  std::vector<void*> pa, pb;
  for (int64_t m = 0; m < nm; ++m) {
    revmerge_module_info info{};
    ASSERT_EQ(revmerge_device_bundle_module(d, m, &info), REVMERGE_OK);
    a[m].resize(info.rank * info.in), bb[m].resize(info.out * info.rank);
    pa.push_back(a[m].data()), pb.push_back(bb[m].data());
  }
  for (int64_t t = 0; t < 3; ++t) {
    ASSERT_EQ(revmerge_materialize(d, t, nullptr, 0, REVMERGE_DTYPE_F32, 1, pa.data(), pb.data(), nullptr),
              REVMERGE_OK)
        << revmerge_last_error();
    for (int64_t m = 0; m < nm; ++m) {
      std::vector<float> ra(a[m].size()), rb(bb[m].size());
      ASSERT_EQ(revmerge_revert_module(b, m, t, REVMERGE_DEVICE_CPU, ra.data(), rb.data()), REVMERGE_OK);
      EXPECT_EQ(a[m], ra);
      EXPECT_EQ(bb[m], rb);
    }
  }
  const int64_t second[] = {1};
  std::vector<float> sa(a[1].size()), sb(bb[1].size());
  void* one_a[] = {sa.data()};
  void* one_b[] = {sb.data()};
  ASSERT_EQ(revmerge_materialize(d, 2, second, 1, REVMERGE_DTYPE_F32, 1, one_a, one_b, nullptr), REVMERGE_OK);
  EXPECT_EQ(sa, a[1]);  // task 2, the last materialised above
  // Without the scale (the tasks' alpha 8, rank 4: scale 2): A as it was, B halved before rounding.
  ASSERT_EQ(revmerge_materialize(d, 2, second, 1, REVMERGE_DTYPE_F32, 0, one_a, one_b, nullptr), REVMERGE_OK)
      << revmerge_last_error();
  EXPECT_EQ(sa, a[1]);
  ASSERT_EQ(sb.size(), bb[1].size());
  for (std::size_t i = 0; i < sb.size(); ++i) EXPECT_EQ(sb[i], bb[1][i] / 2.0f) << i;
  EXPECT_NE(sb, bb[1]);
  {  // A bundle from before the scales were recorded: refused by name.
    const auto old = tmp / "old-bundle";
    std::filesystem::copy(dir, old);
    auto manifest = nlohmann::json::parse(test::read_bytes(old / kBundleManifestName));
    for (auto& mod : manifest["modules"]) mod.erase("task_scales");
    test::write_bytes(old / kBundleManifestName, manifest.dump());
    revmerge_device_bundle* o = nullptr;
    ASSERT_EQ(revmerge_device_bundle_open(old.c_str(), REVMERGE_DEVICE_CPU, &o), REVMERGE_OK) << revmerge_last_error();
    EXPECT_EQ(revmerge_materialize(o, 0, second, 1, REVMERGE_DTYPE_F32, 0, one_a, one_b, nullptr),
              REVMERGE_UNSUPPORTED);
    EXPECT_NE(std::string(revmerge_last_error()).find("scales"), std::string::npos);
    EXPECT_EQ(revmerge_materialize(o, 0, second, 1, REVMERGE_DTYPE_F32, 1, one_a, one_b, nullptr), REVMERGE_OK);
    revmerge_device_bundle_close(o);
  }
  EXPECT_EQ(revmerge_materialize(d, 0, second, 1, 9, 1, one_a, one_b, nullptr), REVMERGE_USAGE_ERROR);
  EXPECT_NE(std::string(revmerge_last_error()).find("dtype: 9"), std::string::npos);
  EXPECT_EQ(revmerge_materialize(d, 3, second, 1, REVMERGE_DTYPE_F32, 1, one_a, one_b, nullptr),
            REVMERGE_USAGE_ERROR);
  EXPECT_NE(std::string(revmerge_last_error()).find("task 3"), std::string::npos);
  // A folder from the resident tensors: revert's folder, byte for byte.
  ASSERT_EQ(revmerge_device_bundle_save(d, "task1", (tmp / "saved").c_str(), 0), REVMERGE_OK) << revmerge_last_error();
  ASSERT_EQ(revmerge_revert_task(b, "task1", (tmp / "reverted").c_str(), 0, REVMERGE_DEVICE_CPU), REVMERGE_OK);
  for (const auto& entry : std::filesystem::directory_iterator(tmp / "reverted"))
    EXPECT_EQ(test::read_bytes(entry.path()), test::read_bytes(tmp / "saved" / entry.path().filename()))
        << entry.path().filename();
  EXPECT_EQ(revmerge_device_bundle_save(d, "task1", (tmp / "saved").c_str(), 0), REVMERGE_IO_ERROR);  // exists
  EXPECT_EQ(revmerge_device_bundle_save(d, "nobody", (tmp / "x").c_str(), 0), REVMERGE_USAGE_ERROR);
  EXPECT_NE(std::string(revmerge_last_error()).find("task0, task1, task2"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(tmp / "x"));
  revmerge_device_bundle* none = nullptr;
  EXPECT_NE(revmerge_device_bundle_open((tmp / "task0").c_str(), REVMERGE_DEVICE_CPU, &none), REVMERGE_OK);
  EXPECT_EQ(none, nullptr);
  revmerge_device_bundle_close(d);
  revmerge_bundle_close(b);
}

// Every file under `dir` with its bytes.
std::map<std::string, std::string> contents(const std::filesystem::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[e.path().lexically_relative(dir).string()] = test::read_bytes(e.path());
  return files;
}

// `overwrite` replaces an existing output, never the call's own inputs: an output that is an
// input, or a folder holding one, is a usage error naming both, and every input stays as it was.
TEST(CApi, OverwriteNeverReplacesAnInput) {
  test::TempDir tmp;
  const auto dir = merged_bundle(tmp);
  const auto before = contents(tmp.path());
  std::vector<std::string> paths;
  for (int t = 0; t < 3; ++t) paths.push_back((tmp / ("task" + std::to_string(t))).string());
  const char* adapters[] = {paths[0].c_str(), paths[1].c_str(), paths[2].c_str()};
  const auto refused = [&](revmerge_status status, const std::string& out, const std::string& what) {
    EXPECT_EQ(status, REVMERGE_USAGE_ERROR) << out;
    EXPECT_NE(std::string(revmerge_last_error()).find("output " + out + ": " + what), std::string::npos)
        << revmerge_last_error();
  };
  refused(revmerge_merge_rmm(adapters, nullptr, 3, 1, paths[1].c_str(), 1, REVMERGE_DEVICE_CPU), paths[1],
          "it is an input (" + paths[1] + ")");
  refused(revmerge_merge_rmm(adapters, nullptr, 3, 1, tmp.path().c_str(), 1, REVMERGE_DEVICE_CPU),
          tmp.path().string(), "it holds an input");
  refused(revmerge_merge_auto(adapters, nullptr, 3, 0.5, 0, paths[0].c_str(), 1, REVMERGE_DEVICE_CPU), paths[0],
          "it is an input");
  revmerge_bundle* b = nullptr;
  ASSERT_EQ(revmerge_bundle_open(dir.c_str(), &b), REVMERGE_OK);
  refused(revmerge_revert_task(b, "task0", dir.c_str(), 1, REVMERGE_DEVICE_CPU), dir.string(),
          "it is an input (" + dir.string() + ")");
  revmerge_bundle_close(b);
  revmerge_device_bundle* d = nullptr;
  ASSERT_EQ(revmerge_device_bundle_open(dir.c_str(), REVMERGE_DEVICE_CPU, &d), REVMERGE_OK);
  refused(revmerge_device_bundle_save(d, "task0", tmp.path().c_str(), 1), tmp.path().string(), "it holds an input");
  revmerge_device_bundle_close(d);
  EXPECT_EQ(contents(tmp.path()), before);
}

TEST(CApi, FailuresAreStatusesWithMessagesAndLeaveNothing) {
  test::TempDir tmp;
  const auto dir = merged_bundle(tmp);
  revmerge_bundle* b = nullptr;
  // Not a bundle: a PEFT adapter folder.
  EXPECT_NE(revmerge_bundle_open((tmp / "task0").c_str(), &b), REVMERGE_OK);
  EXPECT_EQ(b, nullptr);
  EXPECT_NE(std::string(revmerge_last_error()).find("task0"), std::string::npos)
      << revmerge_last_error();
  EXPECT_EQ(revmerge_bundle_open(nullptr, &b), REVMERGE_USAGE_ERROR);
  ASSERT_EQ(revmerge_bundle_open(dir.c_str(), &b), REVMERGE_OK);
  revmerge_module_info info{};
  EXPECT_EQ(revmerge_bundle_module(b, 4, &info), REVMERGE_USAGE_ERROR);
  EXPECT_NE(std::string(revmerge_last_error()).find("module 4"), std::string::npos)
      << revmerge_last_error();
  std::vector<float> a(64), bb(64);
  EXPECT_EQ(revmerge_revert_module(b, 0, 3, REVMERGE_DEVICE_CPU, a.data(), bb.data()),
            REVMERGE_USAGE_ERROR);
  EXPECT_EQ(revmerge_revert_module(b, 0, 0, REVMERGE_DEVICE_CPU, nullptr, bb.data()),
            REVMERGE_USAGE_ERROR);
  EXPECT_EQ(revmerge_revert_module(b, 0, 0, 7, a.data(), bb.data()), REVMERGE_USAGE_ERROR);
  // An unknown task names the bundle's tasks; an existing output is kept without `overwrite`.
  EXPECT_EQ(revmerge_revert_task(b, "nobody", (tmp / "x").c_str(), 0, REVMERGE_DEVICE_CPU),
            REVMERGE_USAGE_ERROR);
  EXPECT_NE(std::string(revmerge_last_error()).find("task0, task1, task2"), std::string::npos)
      << revmerge_last_error();
  EXPECT_FALSE(std::filesystem::exists(tmp / "x"));
  std::filesystem::create_directories(tmp / "kept");
  test::write_bytes(tmp / "kept" / "mine.txt", "mine");
  EXPECT_NE(revmerge_revert_task(b, "task0", (tmp / "kept").c_str(), 0, REVMERGE_DEVICE_CPU),
            REVMERGE_OK);
  EXPECT_EQ(test::list_dir(tmp / "kept"), std::vector<std::string>{"mine.txt"});
  EXPECT_EQ(revmerge_revert_task(b, "task0", (tmp / "kept").c_str(), 1, REVMERGE_DEVICE_CPU),
            REVMERGE_OK);
  revmerge_bundle_close(b);
}

}  // namespace
}  // namespace revmerge
