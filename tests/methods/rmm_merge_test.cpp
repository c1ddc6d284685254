// merge_rmm → bundle → revert, on adapters with mixed ranks and scale options, on the example
// adapters PEFT wrote, and on every kind of bad input.
#include <gtest/gtest.h>

#include <cmath>

#include "core/interrupt.hpp"
#include "core/json_file.hpp"
#include "methods/adapter_writer.hpp"
#include "revmerge/error.hpp"
#include "revmerge/rmm.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using test::ModuleSpec;

const std::vector<ModuleSpec> kModules = {{"model.layers.0.self_attn.q_proj", 4, 10, 12},
                                          {"model.layers.0.self_attn.v_proj", 4, 10, 6},
                                          {"model.layers.1.self_attn.q_proj", 4, 10, 12},
                                          {"model.layers.1.self_attn.v_proj", 4, 10, 6}};

std::vector<ModuleSpec> with_rank(std::vector<ModuleSpec> m, std::int64_t r) {
  for (auto& x : m) x.rank = r;
  return m;
}

// Four tasks whose scales come from four different rules.
std::vector<test::WrittenAdapter> mixed_tasks(const test::TempDir& tmp) {
  auto t2_modules = kModules;
  t2_modules[3].rank = 2;  // rank_pattern below
  return {
      test::write_adapter(tmp / "plain", 4, 8, kModules, "", 1),
      test::write_adapter(tmp / "rslora", 4, 8, kModules, "\"use_rslora\": true", 2),
      test::write_adapter(tmp / "patterns", 4, 8, t2_modules,
                          "\"rank_pattern\": {\"layers.1.self_attn.v_proj\": 2}, "
                          "\"alpha_pattern\": {\"v_proj\": 1.5}", 3),
      test::write_adapter(tmp / "rank3", 3, 6, with_rank(kModules, 3), "", 4),
  };
}

// Options merging `tasks` (named after their folders) into `out` with basis `p`.
RmmMergeOptions options_for(const std::vector<test::WrittenAdapter>& tasks, std::int64_t p,
                            const std::filesystem::path& out) {
  RmmMergeOptions o;
  for (const auto& t : tasks) o.tasks.push_back({t.dir.filename(), t.dir});
  o.basis = p;
  o.out = out;
  return o;
}

TEST(RmmMerge, ScalesAndRanksAreFoldedSoNMinusOneRevertsEveryDeltaExactly) {
  test::TempDir tmp;
  const auto tasks = mixed_tasks(tmp);
  // The scales PEFT applies, written out here by hand.
  EXPECT_DOUBLE_EQ(tasks[0].scale.at(kModules[0].path), 2.0);
  EXPECT_DOUBLE_EQ(tasks[1].scale.at(kModules[0].path), 4.0);  // 8 / sqrt(4)
  EXPECT_DOUBLE_EQ(tasks[2].scale.at(kModules[3].path), 0.75);  // 1.5 / 2
  EXPECT_DOUBLE_EQ(tasks[2].scale.at(kModules[1].path), 0.375);  // 1.5 / 4
  EXPECT_DOUBLE_EQ(tasks[3].scale.at(kModules[0].path), 2.0);

  auto o = options_for(tasks, 3, tmp / "bundle");
  const auto manifest = merge_rmm(o);
  const Bundle bundle(tmp / "bundle");
  ASSERT_EQ(bundle.manifest().modules.size(), 4u);
  for (std::size_t mi = 0; mi < kModules.size(); ++mi) {
    const auto& spec = kModules[mi];
    const auto& mod = bundle.manifest().modules[mi];
    ASSERT_EQ(mod.path, spec.path);
    EXPECT_EQ(mod.rank, 4);  // padded to the largest
    for (std::size_t t = 0; t < tasks.size(); ++t) {
      const auto r = static_cast<std::int64_t>(tasks[t].a.at(spec.path).size()) / spec.in;
      EXPECT_EQ(mod.task_ranks[t], r);
      const auto original = test::dense_delta(tasks[t].a.at(spec.path), tasks[t].b.at(spec.path), r,
                                              spec.in, spec.out, tasks[t].scale.at(spec.path));
      const auto rm = revert_module(bundle, mi, static_cast<std::int64_t>(t));
      const auto back = test::dense_delta(rm.a, rm.b, mod.rank, spec.in, spec.out, 1.0);
      EXPECT_LE(test::relative_difference(back, original), 1e-6) << spec.path << " task " << t;
      EXPECT_LE(mod.delta_error[t], 1e-6);
    }
    const double n = 4, p = 3, r = 4;
    double raw = 0;
    for (auto rk : mod.task_ranks) raw += double(rk);
    EXPECT_NEAR(mod.storage_ratio, (p * (r + n) + r) / raw, 1e-12);
  }
  // Bytes: the tasks' own f32 factors against the bundle's tensors, as the files hold them.
  std::uint64_t inputs = 0, stored = 0;
  for (const auto& mod : bundle.manifest().modules) {
    for (auto rk : mod.task_ranks) inputs += 4 * rk * (mod.in + mod.out);
    stored += 4 * (mod.in + mod.out) * (3 * (mod.rank + 4) + mod.rank);
  }
  EXPECT_EQ(manifest.input_bytes, inputs);
  EXPECT_EQ(manifest.stored_bytes, stored);
  std::uint64_t tensor_bytes = 0;
  for (const auto& t : bundle.tensors().tensors()) tensor_bytes += t.info->nbytes();
  EXPECT_EQ(manifest.stored_bytes, tensor_bytes);
  EXPECT_EQ(bundle.manifest().input_bytes, inputs);  // written and read back
  EXPECT_EQ(bundle.manifest().stored_bytes, stored);
}

TEST(RmmMerge, ManifestErrorsMatchTheRevertedAdaptersPeftWrote) {
  test::TempDir tmp;
  const std::filesystem::path ex = std::filesystem::path(REVMERGE_SOURCE_DIR) / "examples" / "adapters";
  RmmMergeOptions o;
  for (const char* t : {"chat", "code", "math", "qa", "sentiment", "summary", "topic", "translate"})
    o.tasks.push_back({t, ex / t});
  o.basis = 2;
  o.out = tmp / "bundle";
  const auto manifest = merge_rmm(o);
  EXPECT_NEAR(manifest.storage_ratio, (2.0 * (16 + 8) + 16) / (8.0 * 16), 1e-12);
  const Bundle bundle(tmp / "bundle");
  revert_task(bundle, "qa", tmp / "qa", {});
  const PeftAdapter original(ex / "qa"), reverted(tmp / "qa");
  const auto t = manifest.task_index("qa");
  for (std::size_t mi = 0; mi < manifest.modules.size(); ++mi) {
    const auto& mod = manifest.modules[mi];
    const auto* mo = original.find(mod.path);
    const auto* mr = reverted.find(mod.path);
    ASSERT_TRUE(mo && mr) << mod.path;
    EXPECT_DOUBLE_EQ(mr->scale, 1.0);
    const auto d0 = test::dense_delta(original.read_a(*mo), original.read_b(*mo), mo->rank, mo->in, mo->out, mo->scale);
    const auto d1 = test::dense_delta(reverted.read_a(*mr), reverted.read_b(*mr), mr->rank, mr->in, mr->out, 1.0);
    const double measured = test::relative_difference(d1, d0);
    EXPECT_NEAR(mod.delta_error[t], measured, 1e-4 * measured) << mod.path;
    EXPECT_GT(measured, 1e-3);  // P = 2 of 8 is lossy: the comparison is not trivial
  }
}

// Four adapters PEFT wrote on the same modules with four scale rules (plain, rslora,
// rank_pattern + alpha_pattern, rank 6 in bf16): at P = n − 1 every reverted delta equals the
// delta PEFT itself reports (expected.json: its scaling and ‖ΔW‖ in double).
TEST(RmmMerge, RealPeftSetRevertsToPeftsOwnDeltas) {
  test::TempDir tmp;
  const auto set = std::filesystem::path(REVMERGE_FIXTURES) / "peft-set";
  RmmMergeOptions o;
  for (const char* t : {"plain", "rslora", "patterns", "rank6-bf16"}) o.tasks.push_back({t, set / t});
  o.basis = 3;
  o.out = tmp / "bundle";
  merge_rmm(o);
  const Bundle bundle(o.out);
  for (std::size_t t = 0; t < o.tasks.size(); ++t) {
    const PeftAdapter original(o.tasks[t].adapter);
    const auto expected = read_json_file(o.tasks[t].adapter / "expected.json")["modules"];
    for (std::size_t mi = 0; mi < bundle.manifest().modules.size(); ++mi) {
      const auto& mod = bundle.manifest().modules[mi];
      const auto& e = expected[mod.path];
      const auto* m = original.find(mod.path);
      ASSERT_NE(m, nullptr);
      EXPECT_EQ(mod.task_ranks[t], e["rank"].get<std::int64_t>());
      const auto d0 = test::dense_delta(original.read_a(*m), original.read_b(*m), m->rank, m->in,
                                        m->out, e["scale"].get<double>());
      const auto rm = revert_module(bundle, mi, static_cast<std::int64_t>(t));
      const auto d1 = test::dense_delta(rm.a, rm.b, mod.rank, mod.in, mod.out, 1.0);
      EXPECT_LE(test::relative_difference(d1, d0), 1e-6) << o.tasks[t].name << " " << mod.path;
      double fro = 0;
      for (double x : d1) fro += x * x;
      EXPECT_NEAR(std::sqrt(fro), e["delta_fro"].get<double>(), 1e-5 * e["delta_fro"].get<double>());
    }
  }
}

// Runs merge_rmm and returns the error message; asserts no output folder was left.
template <class E>
std::string merge_error(RmmMergeOptions o) {
  try {
    merge_rmm(o);
  } catch (const E& e) {
    EXPECT_FALSE(std::filesystem::exists(o.out)) << "output written despite: " << e.what();
    if (o.out.has_parent_path())
      for (const auto& name : test::list_dir(o.out.parent_path()))
        EXPECT_EQ(name.find(".revmerge-tmp"), std::string::npos) << name;
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "unexpected exception type: " << e.what();
    return "";
  }
  ADD_FAILURE() << "accepted";
  return "";
}

TEST(RmmMerge, BadInputNamesTheProblemAndWritesNothing) {
  test::TempDir tmp;
  const auto tasks = mixed_tasks(tmp);
  auto base = [&] {
    std::filesystem::create_directories(tmp / "out");
    return options_for(tasks, 2, tmp / "out" / "bundle");
  };
  auto o = base();
  o.tasks.resize(1);
  EXPECT_NE(merge_error<usage_error>(o).find("at least 2 adapters"), std::string::npos);
  o = base();
  o.basis = 4;
  EXPECT_NE(merge_error<usage_error>(o).find("--basis 4 is outside 1 .. n − 1 = 3"), std::string::npos);
  o = base();
  o.tasks[1].name = o.tasks[0].name;
  EXPECT_NE(merge_error<usage_error>(o).find("used twice"), std::string::npos);

  auto missing = kModules;
  missing.pop_back();
  test::write_adapter(tmp / "missing", 4, 8, missing, "", 5);
  o = base();
  o.tasks.push_back({"missing", tmp / "missing"});
  const auto missing_msg = merge_error<shape_error>(o);
  EXPECT_NE(missing_msg.find("module 'model.layers.1.self_attn.v_proj' of task"), std::string::npos) << missing_msg;
  EXPECT_NE(missing_msg.find("is missing from task 'missing'"), std::string::npos) << missing_msg;

  auto wider = kModules;
  wider[0].in = 11;
  test::write_adapter(tmp / "wider", 4, 8, wider, "", 6);
  o = base();
  o.tasks.push_back({"wider", tmp / "wider"});
  EXPECT_NE(merge_error<shape_error>(o).find("adapters for different base shapes"), std::string::npos);

  test::write_adapter(tmp / "nan", 4, 8, kModules, "", 7, std::nanf(""));
  o = base();
  o.tasks.push_back({"nan", tmp / "nan"});
  const auto msg = merge_error<format_error>(o);
  EXPECT_NE(msg.find("nan/adapter_model.safetensors: tensor"), std::string::npos) << msg;
  EXPECT_NE(msg.find("non-finite value"), std::string::npos) << msg;

  o = base();
  o.tasks.push_back({"absent", tmp / "absent"});
  EXPECT_NE(merge_error<io_error>(o).find("absent: not a folder"), std::string::npos);
}

TEST(RmmMerge, AnExistingOutputIsKeptUnlessOverwriteIsAsked) {
  test::TempDir tmp;
  const auto tasks = mixed_tasks(tmp);
  auto o = options_for(tasks, 1, tmp / "bundle");
  std::filesystem::create_directories(o.out);
  test::write_bytes(o.out / "keep.txt", "mine");
  EXPECT_THROW(merge_rmm(o), io_error);
  EXPECT_EQ(test::read_bytes(o.out / "keep.txt"), "mine");
  o.overwrite = true;
  merge_rmm(o);
  EXPECT_FALSE(std::filesystem::exists(o.out / "keep.txt"));
  EXPECT_EQ(Bundle(o.out).manifest().basis, 1);
}

TEST(RmmMerge, AnInterruptMidwayLeavesNoOutput) {
  test::TempDir tmp;
  const auto tasks = mixed_tasks(tmp);
  auto o = options_for(tasks, 2, tmp / "bundle");
  o.progress = [](std::size_t done, std::size_t, const std::string&) {
    if (done == 2) request_interrupt();  // what the SIGINT handler does
  };
  EXPECT_THROW(merge_rmm(o), interrupted);
  clear_interrupt();
  std::vector<std::string> left = test::list_dir(tmp.path());
  for (const auto& name : left) EXPECT_EQ(name.find("bundle"), std::string::npos) << name;
}

TEST(RmmRevert, UnknownTaskAndDamagedBundlesAreReported) {
  test::TempDir tmp;
  const auto tasks = mixed_tasks(tmp);
  auto o = options_for(tasks, 2, tmp / "bundle");
  merge_rmm(o);
  const Bundle bundle(o.out);
  try {
    revert_task(bundle, "nope", tmp / "r", {});
    FAIL();
  } catch (const usage_error& e) {
    EXPECT_NE(std::string(e.what()).find("'nope' is not in"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("plain, rslora, patterns, rank3"), std::string::npos);
  }
  EXPECT_FALSE(std::filesystem::exists(tmp / "r"));
  // A manifest claiming a basis the tensors do not have.
  auto text = test::read_bytes(o.out / kBundleManifestName);
  text.replace(text.find("\"basis\": 2"), 10, "\"basis\": 3");
  test::write_bytes(o.out / kBundleManifestName, text);
  try {
    Bundle b(o.out);
    FAIL();
  } catch (const format_error& e) {
    EXPECT_NE(std::string(e.what()).find("does not have the float shape the manifest implies"), std::string::npos)
        << e.what();
  }
}

// A bundle's tensors are one file or an index of shards: both, neither, or an index naming a
// shard that is not there are refused, naming the folder or the file.
TEST(RmmRevert, ABundleHoldsOneFileOrAnIndexOfShards) {
  test::TempDir tmp;
  const auto tasks = mixed_tasks(tmp);
  auto o = options_for(tasks, 2, tmp / "bundle");
  merge_rmm(o);
  const auto message = [&] {
    try {
      Bundle b(o.out);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("opened");
  };
  ShardIndex index;
  index.weight_map["x"] = bundle_shard_name(1, 1);
  test::write_bytes(o.out / kBundleIndexName, shard_index_json(index));
  EXPECT_NE(message().find("holds both"), std::string::npos) << message();
  const auto file = o.out / kBundleTensorsName;
  std::filesystem::rename(file, o.out / bundle_shard_name(1, 1));
  EXPECT_NE(message().find(bundle_shard_name(1, 1) + ", which does not hold it"), std::string::npos) << message();
  std::filesystem::remove(o.out / kBundleIndexName);
  EXPECT_NE(message().find("neither bundle.safetensors nor"), std::string::npos) << message();
}

// A manifest's task ranks index the stored factors' rows on revert: one past the module's rank
// (or below 1) is refused by module, not read out of bounds.
TEST(RmmMerge, TaskRanksOutsideTheModulesRankAreRefused) {
  test::TempDir tmp;
  const auto tasks = mixed_tasks(tmp);
  auto o = options_for(tasks, 2, tmp / "bundle");
  merge_rmm(o);
  const auto original = test::read_bytes(o.out / kBundleManifestName);
  for (const std::int64_t bad : {5, 0, -1}) {
    auto j = nlohmann::json::parse(original);
    j["modules"][1]["task_ranks"][2] = bad;  // the module's rank is 4
    test::write_bytes(o.out / kBundleManifestName, j.dump(1));
    try {
      Bundle b(o.out);
      FAIL() << bad;
    } catch (const format_error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("module '" + kModules[1].path + "': task rank " + std::to_string(bad) +
                          " is outside 1 .. 4"),
                std::string::npos)
          << what;
    }
  }
}

}  // namespace
}  // namespace revmerge
