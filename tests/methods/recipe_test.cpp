// Every output folder holds revmerge_recipe.json: the version, the method with every parameter
// in effect, the inputs by name and absolute path, and the caller's command line and config.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "revmerge/bundle.hpp"
#include "revmerge/classic.hpp"
#include "revmerge/compress.hpp"
#include "revmerge/recipe.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/version.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kExamples = fs::path(REVMERGE_SOURCE_DIR) / "examples";
const fs::path kGolden = fs::path(REVMERGE_FIXTURES) / "golden" / "mergekit";

json recipe_in(const fs::path& out) {
  const auto p = out / kRecipeName;
  EXPECT_TRUE(fs::exists(p)) << p;
  return json::parse(test::read_bytes(p));
}

// The recipe names `method`, holds each of `parameters` with a value starting as given, and
// lists `inputs` by name with absolute paths.
void expect_recipe(const json& r, const std::string& method,
                   const std::vector<std::pair<std::string, std::string>>& parameters,
                   const std::vector<std::pair<std::string, fs::path>>& inputs) {
  EXPECT_EQ(r.at("revmerge_version"), REVMERGE_VERSION_STRING);
  EXPECT_EQ(r.at("method"), method);
  for (const auto& [key, value] : parameters) {
    ASSERT_TRUE(r.at("parameters").contains(key)) << key << " in " << r.dump();
    EXPECT_EQ(r["parameters"][key].get<std::string>().rfind(value, 0), 0u)
        << key << ": " << r["parameters"][key] << " does not start with " << value;
  }
  ASSERT_EQ(r.at("inputs").size(), inputs.size()) << r.dump();
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_EQ(r["inputs"][i]["name"], inputs[i].first);
    EXPECT_EQ(fs::path(r["inputs"][i]["path"].get<std::string>()),
              fs::absolute(inputs[i].second).lexically_normal());
  }
}

OutputRecipe command(const std::string& config_file = {}, const std::string& config_text = {}) {
  return {{"revmerge", "merge", "--seed", "7"}, config_file, config_text};
}

TEST(Recipe, ABundleRecordsBasisDtypeInputsAndTheCommand) {
  test::TempDir tmp;
  RmmMergeOptions o;
  for (const auto* t : {"chat", "code", "qa"}) o.tasks.push_back({t, kExamples / "adapters" / t});
  o.basis = 1;
  o.out = tmp / "bundle";
  o.device = Device::cpu;
  o.recipe = command("merge.yml", "method: rmm\nbasis: 1\n");
  merge_rmm(o);
  const auto r = recipe_in(o.out);
  expect_recipe(r, "rmm", {{"basis", "1"}, {"dtype", "F32 (not given"}, {"allow_nonfinite", "false"}},
                {{"chat", o.tasks[0].adapter}, {"code", o.tasks[1].adapter}, {"qa", o.tasks[2].adapter}});
  EXPECT_EQ(r.at("command"), json({"revmerge", "merge", "--seed", "7"}));
  EXPECT_EQ(r.at("working_folder"), fs::current_path().string());
  EXPECT_EQ(fs::path(r.at("config_file").get<std::string>()), fs::absolute("merge.yml"));
  EXPECT_EQ(r.at("config"), "method: rmm\nbasis: 1\n");

  // Reverted: the task, the bundle; as an adapter and as a full model.
  const Bundle bundle(o.out);
  RevertOptions ro;
  ro.device = Device::cpu;
  revert_task(bundle, "code", tmp / "code", ro);
  expect_recipe(recipe_in(tmp / "code"), "revert", {{"task", "code"}, {"output", "adapter"}, {"dtype", "F32"}},
                {{"bundle", o.out}});
  revert_task_full(bundle, "qa", kExamples / "tiny-llama", tmp / "qa-model", ro, DType::BF16);
  expect_recipe(recipe_in(tmp / "qa-model"), "revert",
                {{"task", "qa"}, {"task source", o.tasks[2].adapter.string()}, {"output", "full model"}, {"dtype", "BF16"}},
                {{"bundle", o.out}, {"base", kExamples / "tiny-llama"}});
  EXPECT_FALSE(recipe_in(tmp / "qa-model").contains("command"));  // a library call without one
}

TEST(Recipe, ClassicOutputsRecordEveryParameterAndTheSeed) {
  test::TempDir tmp;
  ClassicMergeOptions o;
  o.method = ClassicMethod::dare_linear;
  for (const auto* t : {"math", "topic"}) o.tasks.push_back({t, kExamples / "adapters" / t});
  o.weights = {0.5, 1.5};
  o.densities = {0.6};
  o.seed = 42;
  o.out = tmp / "adapter";
  o.recipe = command();
  merge_classic(o);
  const std::vector<std::pair<std::string, fs::path>> inputs = {{"math", o.tasks[0].adapter},
                                                                {"topic", o.tasks[1].adapter}};
  expect_recipe(recipe_in(o.out), "dare_linear",
                {{"mode", "separate"}, {"weights", "0.5, 1.5"}, {"density", "0.6"}, {"seed", "42"},
                 {"rescale", "by 1 / density"}, {"dtype", "F32"}},
                inputs);
  o.full_model = true;
  o.base = kExamples / "tiny-llama";
  o.out = tmp / "model";
  merge_classic(o);
  expect_recipe(recipe_in(o.out), "dare_linear", {{"seed", "42"}, {"base", o.base.string()}}, inputs);

  ClassicMergeOptions c;
  c.method = ClassicMethod::ties;
  for (const auto* t : {"ft0", "ft1"}) c.tasks.push_back({t, kGolden / t});
  c.base = kGolden / "base";
  c.densities = {0.5, 0.3};
  c.out = tmp / "checkpoint";
  c.recipe = command(kGolden / "ties.yml", test::read_bytes(kGolden / "ties.yml"));
  merge_classic(c);
  const auto r = recipe_in(c.out);
  expect_recipe(r, "ties", {{"mode", "checkpoint"}, {"density", "0.5, 0.3"}, {"dtype", "the base model's"}},
                {{"ft0", c.tasks[0].adapter}, {"ft1", c.tasks[1].adapter}});
  EXPECT_EQ(r.at("config"), test::read_bytes(kGolden / "ties.yml"));
}

TEST(Recipe, ACompressedAdapterRecordsTheSketch) {
  test::TempDir tmp;
  CompressOptions o;
  o.base = kGolden / "base";
  o.model = kGolden / "ft1";
  o.rank = 3;
  o.seed = 11;
  o.exclude = {"k_proj"};
  o.device = Device::cpu;
  o.out = tmp / "adapter";
  compress_checkpoint(o);
  expect_recipe(recipe_in(o.out), "pt-svd",
                {{"rank", "3"}, {"energy", "0 (not given"}, {"oversampling", "8"}, {"power_iterations", "2"},
                 {"include", "(all"}, {"exclude", "k_proj"}, {"dtype", "F32"}, {"seed", "11"}},
                {{"base", o.base}, {"model", o.model}});
}

}  // namespace
}  // namespace revmerge
