// merge_classic end to end: adapters written as a full model (checked against base + the
// double-precision delta), and every bad option or input refused by name with nothing written.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "methods/adapter_writer.hpp"
#include "methods/classic/classic_internal.hpp"
#include "reference/classic_reference.hpp"
#include "revmerge/classic.hpp"
#include "revmerge/error.hpp"
#include "revmerge/hf_model.hpp"
#include "revmerge/safetensors.hpp"
#include "classic_fixtures.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using namespace classic_fixtures;
namespace fs = std::filesystem;

TEST(ClassicMerge, CatAsFullModelIsBasePlusTheWeightedDeltas) {
  test::TempDir tmp;
  const auto o = full_model_options(tmp, ClassicMethod::cat);
  const auto report = merge_classic(o);
  EXPECT_EQ(report.output, "model");
  const HfModel base(o.base), merged(o.out);
  std::vector<std::unique_ptr<PeftAdapter>> adapters;
  for (const auto& t : o.tasks) adapters.push_back(std::make_unique<PeftAdapter>(t.adapter));
  std::size_t adapted = 0;
  for (const auto& t : base.checkpoint().tensors()) {
    const auto& name = t.info->name;
    const auto want_base = read_f64(base, name);
    const auto got = read_f64(merged, name);
    const auto* m = adapters[0]->find(name.substr(0, name.size() - 7));  // drop ".weight"
    if (!name.ends_with(".weight") || !m) {
      EXPECT_EQ(got, want_base) << name << " is not adapted and must be copied unchanged";
      continue;
    }
    ++adapted;
    auto want = want_base;
    for (std::size_t i = 0; i < adapters.size(); ++i) {
      const auto& mi = *adapters[i]->find(m->path);
      const auto d = test::dense_delta(adapters[i]->read_a(mi), adapters[i]->read_b(mi), mi.rank,
                                       mi.in, mi.out, mi.scale * o.weights[i]);
      for (std::size_t j = 0; j < want.size(); ++j) want[j] += d[j];
    }
    for (std::size_t j = 0; j < want.size(); ++j) ASSERT_NEAR(got[j], want[j], 1e-5) << name;
  }
  EXPECT_EQ(adapted, adapters[0]->modules().size());
  EXPECT_TRUE(fs::exists(o.out / "config.json"));
}

TEST(ClassicMerge, CombinedTiesAsFullModelMatchesTheReference) {
  test::TempDir tmp;
  auto o = full_model_options(tmp, ClassicMethod::ties);
  o.mode = LoraMergeMode::combined;
  o.densities = {0.4};
  merge_classic(o);
  const HfModel base(o.base), merged(o.out);
  const auto& path = std::string("model.layers.1.mlp.down_proj");
  std::vector<std::vector<double>> deltas;
  for (const auto& t : o.tasks) {
    const PeftAdapter a(t.adapter);
    const auto& m = *a.find(path);
    deltas.push_back(test::dense_delta(a.read_a(m), a.read_b(m), m.rank, m.in, m.out, m.scale));
  }
  const reference::Recipe peft_ties{.trim = true, .elect = true, .normalize = 1};
  const auto d = reference::combine(peft_ties, deltas, o.weights, {0.4, 0.4, 0.4}, path, 0);
  const auto w = read_f64(base, path + ".weight"), got = read_f64(merged, path + ".weight");
  double scale = 0;
  for (const auto v : d) scale = std::max(scale, std::fabs(v));
  for (std::size_t j = 0; j < d.size(); ++j) ASSERT_NEAR(got[j], w[j] + d[j], 1e-5 * scale + 1e-6);
}

TEST(ClassicMerge, BadOptionsAreRefusedByName) {
  test::TempDir tmp;
  ClassicMergeOptions o;
  o.method = ClassicMethod::ties;
  o.tasks = example_tasks(3);
  o.out = tmp / "out";
  auto bad = o;
  bad.weights = {1, 2};
  expect_refused(bad, "--weights: 2 weights for 3 tasks");
  bad = o;
  bad.densities = {1.5};
  expect_refused(bad, "--density: 1.5 for task 'chat' is outside [0, 1]");
  bad = o;
  bad.method = ClassicMethod::task_arithmetic;
  bad.densities = {0.5};
  expect_refused(bad, "--method task_arithmetic does not prune");
  bad = o;
  bad.allow_nonfinite = true;
  expect_refused(bad, "--allow-nonfinite applies to --method rmm only");
  bad = o;
  bad.base = kExamples / "tiny-llama";
  expect_refused(bad, "add --full-model");
  bad = o;
  bad.full_model = true;
  expect_refused(bad, "--full-model: give the base model with --base");
  bad = o;
  bad.tasks.push_back({"base", kExamples / "tiny-llama"});
  expect_refused(bad, "the inputs mix PEFT adapters and full models");
  bad = o;
  bad.tasks[1].name = "chat";
  expect_refused(bad, "task name 'chat' is used twice");
  bad = o;
  bad.full_model = true;
  bad.base = fs::path(REVMERGE_FIXTURES) / "tiny-llama-sharded";
  expect_refused(bad, "is this the adapters' base model?");
}

// With overwrite, the output may be neither a task nor the base, nor a folder holding one
// (copies here: the examples are the repository's).
TEST(ClassicMerge, OverwriteNeverReplacesAnInput) {
  test::TempDir tmp;
  ClassicMergeOptions o = full_model_options(tmp, ClassicMethod::task_arithmetic);
  fs::create_directories(tmp / "in");
  for (auto& t : o.tasks) {
    fs::copy(t.adapter, tmp / "in" / t.name, fs::copy_options::recursive);
    t.adapter = tmp / "in" / t.name;
  }
  fs::copy(o.base, tmp / "in" / "base", fs::copy_options::recursive);
  o.base = tmp / "in" / "base";
  o.overwrite = true;
  const auto weights = test::read_bytes(o.tasks[1].adapter / kAdapterWeightsName);
  for (const auto& out : {o.tasks[1].adapter, o.base, tmp / "in"}) {
    auto bad = o;
    bad.out = out;
    try {
      merge_classic(bad);
      ADD_FAILURE() << "accepted: output " << out;
    } catch (const usage_error& e) {
      EXPECT_NE(std::string(e.what()).find("output " + out.string() + ": it "), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(test::read_bytes(o.tasks[1].adapter / kAdapterWeightsName), weights);
  EXPECT_TRUE(fs::exists(o.base / "model.safetensors"));
  EXPECT_NO_THROW(merge_classic(o));  // elsewhere: fine
}

TEST(ClassicMerge, SeparateModeNeedsEqualRanks) {
  test::TempDir tmp;
  const std::vector<test::ModuleSpec> r4 = {{"model.layers.0.self_attn.q_proj", 4, 8, 8}};
  const std::vector<test::ModuleSpec> r2 = {{"model.layers.0.self_attn.q_proj", 2, 8, 8}};
  test::write_adapter(tmp / "a", 4, 8, r4, "", 1);
  test::write_adapter(tmp / "b", 2, 4, r2, "", 2);
  ClassicMergeOptions o;
  o.method = ClassicMethod::ties;
  o.tasks = {{"a", tmp / "a"}, {"b", tmp / "b"}};
  o.out = tmp / "out";
  expect_refused(o, "module 'model.layers.0.self_attn.q_proj': rank 2 in task 'b' but 4 in task 'a'");
  o.mode = LoraMergeMode::combined;  // the products have no such constraint
  EXPECT_NO_THROW(merge_classic(o));
  const PeftAdapter merged(o.out);
  EXPECT_EQ(merged.modules()[0].rank, 4);
}

// A task that does not adapt a module is merged as if it held zero factors there (PEFT's
// add_weighted_adapter skips it, which the zero delta equals for every method): the same
// bytes as an explicit zero module, for every kind of method, and said in the report.
TEST(ClassicMerge, AMissingModuleIsAZeroDelta) {
  test::TempDir tmp;
  const std::vector<test::ModuleSpec> all = {{"model.layers.0.self_attn.q_proj", 4, 12, 10},
                                             {"model.layers.0.self_attn.v_proj", 4, 12, 6},
                                             {"model.layers.1.self_attn.q_proj", 4, 12, 10}};
  auto partial_modules = all;
  partial_modules.erase(partial_modules.begin() + 1);
  // alpha = r: scale 1, so the explicit zero adapter is the same numbers written again.
  test::write_adapter(tmp / "a", 4, 4, all, "", 1);
  test::write_adapter(tmp / "b", 4, 4, all, "", 2);
  const auto partial = test::write_adapter(tmp / "partial", 4, 4, partial_modules, "", 3);
  test::write_adapter(tmp / "zeroed", 4, 4, all, "", 3);
  {
    std::vector<TensorData> tensors;
    const std::vector<float> za(4 * 12, 0.0f), zb(6 * 4, 0.0f);
    for (const auto& m : all) {
      const bool gone = m.path == all[1].path;
      const auto& a = gone ? za : partial.a.at(m.path);
      const auto& b = gone ? zb : partial.b.at(m.path);
      tensors.push_back({{"base_model.model." + m.path + ".lora_A.weight", DType::F32, {m.rank, m.in}},
                         std::as_bytes(std::span(a))});
      tensors.push_back({{"base_model.model." + m.path + ".lora_B.weight", DType::F32, {m.out, m.rank}},
                         std::as_bytes(std::span(b))});
    }
    write_safetensors(tmp / "zeroed" / kAdapterWeightsName, tensors, {}, true);
  }
  struct Case {
    ClassicMethod method;
    LoraMergeMode mode;
    std::vector<double> densities;
  };
  const Case cases[] = {{ClassicMethod::linear, LoraMergeMode::separate, {}},
                        {ClassicMethod::ties, LoraMergeMode::separate, {0.5}},
                        {ClassicMethod::dare_ties, LoraMergeMode::separate, {0.7}},
                        {ClassicMethod::magnitude_prune, LoraMergeMode::combined, {0.5}},
                        {ClassicMethod::task_arithmetic, LoraMergeMode::combined, {}},
                        {ClassicMethod::cat, LoraMergeMode::separate, {}},
                        {ClassicMethod::svd, LoraMergeMode::separate, {}}};
  int k = 0;
  for (const auto& c : cases) {
    ClassicMergeOptions o;
    o.method = c.method;
    o.mode = c.mode;
    o.densities = c.densities;
    o.weights = {0.5, -1.0, 1.5};
    o.seed = 9;
    o.tasks = {{"a", tmp / "a"}, {"b", tmp / "b"}, {"partial", tmp / "partial"}};
    o.out = tmp / ("missing" + std::to_string(k));
    const auto report = merge_classic(o);
    ASSERT_EQ(report.warnings.size(), 1u) << to_string(c.method);
    EXPECT_EQ(report.warnings[0],
              "task 'partial' does not adapt 1 of the 3 modules the tasks adapt; merged as a zero delta there");
    EXPECT_EQ(report.items, 3);
    auto explicit_zero = o;
    explicit_zero.tasks[2].adapter = tmp / "zeroed";
    explicit_zero.out = tmp / ("zeroed" + std::to_string(k++));
    EXPECT_TRUE(merge_classic(explicit_zero).warnings.empty());
    EXPECT_EQ(test::read_bytes(o.out / kAdapterWeightsName),
              test::read_bytes(explicit_zero.out / kAdapterWeightsName))
        << to_string(c.method);
  }
}

// What the merge ran with is reported, defaults included; tasks for differently named bases
// are merged with a warning naming both.
TEST(ClassicMerge, TheReportShowsEveryParameterAndDifferingBases) {
  test::TempDir tmp;
  const std::vector<test::ModuleSpec> mods = {{"model.layers.0.self_attn.q_proj", 4, 8, 8}};
  test::write_adapter(tmp / "a", 4, 8, mods, "\"base_model_name_or_path\": \"org/base\"", 1);
  test::write_adapter(tmp / "b", 4, 8, mods, "\"base_model_name_or_path\": \"org/base/\"", 2);
  test::write_adapter(tmp / "c", 4, 8, mods, "\"base_model_name_or_path\": \"org/other\"", 3);
  ClassicMergeOptions o;
  o.method = ClassicMethod::ties;
  o.tasks = {{"a", tmp / "a"}, {"b", tmp / "b"}, {"c", tmp / "c"}};
  o.out = tmp / "ties";
  const auto r = merge_classic(o);
  const std::vector<std::pair<std::string, std::string>> want = {
      {"weights", "1 each (not given)"},
      {"density", "1 each (not given: nothing trimmed)"},
      {"lambda", "1 (not given)"},
      {"majority_sign", "total (sum)"},
      {"normalize", "by the count of agreeing tasks (the method's default)"},
      {"dtype", "F32 (not given)"}};
  EXPECT_EQ(r.parameters, want);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_EQ(r.warnings[0],
            "the tasks name different base models: 'org/base' (a, b) and 'org/other' (c); merged "
            "anyway, as their modules have the same shapes");
  o.method = ClassicMethod::dare_linear;
  o.densities = {0.25, 0.5, 1};
  o.lambda = 2;
  o.rescale = false;
  o.seed = 7;
  o.mode = LoraMergeMode::combined;
  o.rank = 3;
  o.dtype = DType::BF16;
  o.out = tmp / "dare";
  const std::vector<std::pair<std::string, std::string>> dare = {
      {"weights", "1 each (not given)"},
      {"density", "0.25, 0.5, 1"},
      {"lambda", "2"},
      {"normalize", "no (the method's default)"},
      {"rescale", "no"},
      {"seed", "7"},
      {"rank", "3"},
      {"dtype", "BF16"}};
  EXPECT_EQ(merge_classic(o).parameters, dare);
}

TEST(ClassicMerge, CheckpointsNeedTheirBaseAndElementWiseMethods) {
  test::TempDir tmp;
  const auto golden = fs::path(REVMERGE_FIXTURES) / "golden" / "mergekit";
  ClassicMergeOptions o;
  o.method = ClassicMethod::ties;
  o.tasks = {{"ft0", golden / "ft0"}, {"ft1", golden / "ft1"}};
  o.out = tmp / "out";
  expect_refused(o, "--base: --method ties merges task vectors");
  o.method = ClassicMethod::svd;
  o.base = golden / "base";
  expect_refused(o, "--method svd re-factorises LoRA adapters");
  o.method = ClassicMethod::linear;
  expect_refused(o, "linear averages the models themselves");
  o.method = ClassicMethod::task_arithmetic;
  o.base = kExamples / "tiny-llama";  // another architecture
  expect_refused(o, "has another shape in task 'ft0' than in the base");
}

TEST(ClassicMerge, MergekitOnlyParametersAreCheckedByName) {
  test::TempDir tmp;
  const auto golden = fs::path(REVMERGE_FIXTURES) / "golden" / "mergekit";
  ClassicMergeOptions o;
  o.tasks = {{"ft0", golden / "ft0"}, {"ft1", golden / "ft1"}};
  o.base = golden / "base";
  o.out = tmp / "out";
  auto bad = o;
  bad.method = ClassicMethod::ties;
  bad.gammas = {0.1};
  expect_refused(bad, "--gamma: an option of --method breadcrumbs and breadcrumbs_ties only");
  bad = o;
  bad.method = ClassicMethod::breadcrumbs;
  bad.epsilons = {0.1};
  expect_refused(bad, "--epsilon: an option of --method della, della_linear, ram and ramplus_tl only");
  bad = o;
  bad.method = ClassicMethod::ties;
  bad.select_topk = 0.5;
  expect_refused(bad, "--select-topk: an option of --method sce only");
  bad = o;
  bad.method = ClassicMethod::sce;
  bad.select_topk = 1.5;
  expect_refused(bad, "--select-topk: 1.5 is outside [0, 1]");
  bad.select_topk = 0.5;
  bad.weights = {1, 2};
  expect_refused(bad, "--weights: not an option of --method sce (it weighs the tasks by their mean squares)");
  bad = o;
  bad.method = ClassicMethod::breadcrumbs;
  bad.densities = {0.5};
  bad.gammas = {0.1, -0.2};
  expect_refused(bad, "--gamma: -0.2 for task 'ft1' is outside [0, 1]");
  bad = o;
  bad.method = ClassicMethod::della;
  bad.densities = {0.5, 0.9};
  bad.epsilons = {0.1};
  expect_refused(bad, "--epsilon: 0.1 for task 'ft1' with density 0.9: DELLA's keep probabilities "
                      "density ± epsilon must lie inside (0, 1)");
  bad.densities = {0.5, 1.0};  // density 1 keeps everything: no probabilities to bound
  bad.epsilons = {0.1};
  bad.out = tmp / "della_dense";
  EXPECT_NO_THROW(merge_classic(bad));
  bad = o;
  bad.method = ClassicMethod::della;
  bad.tasks = example_tasks(2);
  bad.base.clear();
  expect_refused(bad, "--method della merges full models");
  bad = o;
  bad.method = ClassicMethod::ties;
  bad.tasks = example_tasks(2);
  bad.base.clear();
  bad.rescale = true;
  expect_refused(bad, "--rescale: PEFT's ties does not rescale (only DARE does)");
  bad = o;
  bad.method = ClassicMethod::nuslerp;
  bad.tol = 1e-4;
  expect_refused(bad, "--tol / --max-iter: an option of --method karcher only");
  bad.tol.reset();
  bad.tasks.push_back({"ft2", golden / "ft2"});
  expect_refused(bad, "--method nuslerp interpolates between exactly 2 models besides the base; got 3");
  bad = o;
  bad.method = ClassicMethod::karcher;
  bad.weights = {1, 2};
  expect_refused(bad, "--weights: not an option of --method karcher");
  bad = o;
  bad.method = ClassicMethod::multislerp;
  bad.weights = {1, -1};
  expect_refused(bad, "--weights: they sum to 0, and multislerp divides by their sum");
  bad = o;
  bad.method = ClassicMethod::ram;
  bad.epsilons = {1e-5, 1e-4};
  expect_refused(bad, "--epsilon: --method ram takes one epsilon for all tasks");
  bad.epsilons.clear();
  bad.ram_r = 0.3;
  expect_refused(bad, "--ram-r / --ram-alpha: an option of --method ramplus_tl only");
  bad = o;
  bad.method = ClassicMethod::arcee_fusion;
  expect_refused(bad, "--method arcee_fusion fuses the base and one fine-tune; got 2");
}

TEST(TensorParameters, FiltersInOrderAndGradientsAcrossTheLayers) {
  ParameterSetting s{{{"self_attn", {0, 0.5, 0.3, 0.7, 1}}, {"mlp", {2}}, {"", {9}}}};
  EXPECT_EQ(s.at("model.layers.0.self_attn.q_proj.weight", 0.0), 0.0);
  EXPECT_DOUBLE_EQ(*s.at("model.layers.1.self_attn.q_proj.weight", 0.25), 0.5);
  // t = 0.3 → position 1.2 of 4: 0.8 · 0.5 + 0.2 · 0.3
  EXPECT_DOUBLE_EQ(*s.at("x.self_attn.y", 0.3), 0.8 * 0.5 + 0.2 * 0.3);
  EXPECT_EQ(s.at("x.self_attn.y", 1.0), 1.0);
  EXPECT_EQ(s.at("model.layers.2.mlp.up_proj.weight", 0.7), 2.0);
  EXPECT_EQ(s.at("model.norm.weight", 0.0), 9.0);
  ParameterSetting only_mlp{{{"mlp", {1}}}};
  EXPECT_FALSE(only_mlp.at("model.norm.weight", 0.0).has_value());
  EXPECT_DOUBLE_EQ(layer_position("model.layers.3.mlp.up_proj.weight", 5), 0.75);
  EXPECT_EQ(layer_position("model.embed_tokens.weight", 5), 0.0);
  EXPECT_EQ(layer_position("model.layers.0.mlp.up_proj.weight", 1), 1.0);
}

TEST(TensorParameters, AModelsOwnValueOutranksTheConfigsAndDefaultsFillTheRest) {
  ClassicMergeOptions o;
  o.method = ClassicMethod::ties;
  o.tasks = {{"a", "a"}, {"b", "b"}, {"c", "c"}};
  o.tensor_parameters["density"] = ParameterSetting{{{"mlp", {0.3}}}};
  o.task_tensor_parameters.resize(3);
  o.task_tensor_parameters[1]["density"] = ParameterSetting{{{"", {0.6}}}};
  o.task_tensor_parameters[2]["weight"] = ParameterSetting{{{"", {1.0, 0.0}}}};
  const auto mlp = options_for_tensor(o, "model.layers.1.mlp.up_proj.weight", 0.5);
  EXPECT_EQ(mlp.densities, (std::vector<double>{0.3, 0.6, 0.3}));
  EXPECT_EQ(mlp.weights, (std::vector<double>{1.0, 1.0, 0.5}));
  const auto attn = options_for_tensor(o, "model.layers.1.self_attn.q_proj.weight", 1.0);
  EXPECT_EQ(attn.densities, (std::vector<double>{1.0, 0.6, 1.0}));  // no filter applies: the default
  EXPECT_EQ(attn.weights, (std::vector<double>{1.0, 1.0, 0.0}));
  EXPECT_TRUE(attn.tensor_parameters.empty());
}

}  // namespace
}  // namespace revmerge
