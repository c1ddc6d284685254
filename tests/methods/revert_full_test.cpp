// revert_task_full: every bundle module's weight is base + the task's reconstructed delta
// (revert_module's factors, multiplied here in double), every other tensor is the base's.
#include <gtest/gtest.h>

#include <cmath>

#include "revmerge/bundle.hpp"
#include "revmerge/error.hpp"
#include "revmerge/hf_model.hpp"
#include "revmerge/rmm.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

namespace fs = std::filesystem;

// The named example adapters merged at basis 1 on the CPU into `out`.
Bundle example_bundle(const fs::path& out, std::initializer_list<const char*> tasks) {
  RmmMergeOptions m;
  for (const auto* t : tasks) m.tasks.push_back({t, fs::path(REVMERGE_SOURCE_DIR) / "examples" / "adapters" / t});
  m.basis = 1;
  m.out = out;
  m.device = Device::cpu;
  merge_rmm(m);
  return Bundle(out);
}

TEST(RevertFull, IsBasePlusTheReconstructedDelta) {
  test::TempDir tmp;
  const auto ex = fs::path(REVMERGE_SOURCE_DIR) / "examples";
  const Bundle bundle = example_bundle(tmp / "bundle", {"chat", "code", "qa"});
  RevertOptions o;
  o.device = Device::cpu;
  revert_task_full(bundle, "code", ex / "tiny-llama", tmp / "model", o, std::nullopt);
  const HfModel base(ex / "tiny-llama"), got(tmp / "model");
  const auto& man = bundle.manifest();
  std::size_t replaced = 0;
  for (const auto& t : base.checkpoint().tensors()) {
    const auto& name = t.info->name;
    const auto w = t.file->read_f64(name);
    const auto g = got.checkpoint().at(name).file->read_f64(name);
    std::size_t i = 0;
    while (i < man.modules.size() && man.modules[i].path + ".weight" != name) ++i;
    if (i == man.modules.size()) {
      EXPECT_EQ(g, w) << name;
      continue;
    }
    ++replaced;
    const auto& mod = man.modules[i];
    const auto rm = revert_module(bundle, i, 1, Device::cpu);
    for (std::int64_t y = 0; y < mod.out; ++y)
      for (std::int64_t x = 0; x < mod.in; ++x) {
        double v = w[y * mod.in + x];
        for (std::int64_t k = 0; k < mod.rank; ++k) v += double(rm.b[y * mod.rank + k]) * rm.a[k * mod.in + x];
        ASSERT_NEAR(g[y * mod.in + x], v, 1e-6 * (1 + std::fabs(v))) << name;
      }
  }
  EXPECT_EQ(replaced, man.modules.size());
  EXPECT_THROW(revert_task_full(bundle, "code", fs::path(REVMERGE_FIXTURES) / "tiny-llama-sharded",
                                tmp / "never", o, std::nullopt),
               shape_error);
  EXPECT_FALSE(fs::exists(tmp / "never"));
}

// A model written in another dtype than its base says so in its config.json (transformers
// loads a model in the config's dtype: a bf16 model labelled float32 takes twice the memory).
TEST(RevertFull, TheConfigNamesTheDtypeWritten) {
  test::TempDir tmp;
  const auto ex = fs::path(REVMERGE_SOURCE_DIR) / "examples";
  const Bundle bundle = example_bundle(tmp / "bundle", {"chat", "code"});
  RevertOptions o;
  o.device = Device::cpu;
  for (const auto& [dtype, name] : {std::pair{DType::BF16, "bfloat16"}, std::pair{DType::F16, "float16"}}) {
    const auto out = tmp / ("model-" + std::string(name));
    revert_task_full(bundle, "code", ex / "tiny-llama", out, o, dtype);
    const auto config = test::read_bytes(out / "config.json");
    EXPECT_NE(config.find("\"dtype\": \"" + std::string(name) + "\""), std::string::npos) << config;
    EXPECT_EQ(config.find("float32"), std::string::npos) << config;
    const HfModel got(out);
    for (const auto& t : got.checkpoint().tensors())
      if (is_float_dtype(t.info->dtype)) EXPECT_EQ(t.info->dtype, dtype) << t.info->name;
  }
}

}  // namespace
}  // namespace revmerge
