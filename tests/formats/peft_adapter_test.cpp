// Reading the adapters real PEFT wrote, and writing adapters PEFT loads.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "core/json_file.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

const std::filesystem::path kPeft = std::filesystem::path(REVMERGE_FIXTURES) / "peft";

// ΔW = scale · B A in double, with plain loops (independent of the code under test).
std::vector<double> reference_delta(const std::vector<float>& a, const std::vector<float>& b,
                                    std::int64_t r, std::int64_t in, std::int64_t out,
                                    double scale) {
  std::vector<double> d(static_cast<std::size_t>(out * in), 0.0);
  for (std::int64_t i = 0; i < out; ++i)
    for (std::int64_t j = 0; j < in; ++j) {
      double s = 0;
      for (std::int64_t k = 0; k < r; ++k) s += double(b[i * r + k]) * double(a[k * in + j]);
      d[i * in + j] = scale * s;
    }
  return d;
}

class PeftFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(PeftFixture, ModulesRanksScalesAndDeltasMatchWhatPeftReports) {
  const PeftAdapter adapter(kPeft / GetParam());
  const auto expected = read_json_file(kPeft / GetParam() / "expected.json")["modules"];
  ASSERT_EQ(adapter.modules().size(), expected.size());
  for (const auto& m : adapter.modules()) {
    SCOPED_TRACE(m.path);
    ASSERT_TRUE(expected.contains(m.path));
    const auto& e = expected[m.path];
    EXPECT_EQ(m.rank, e["rank"].get<std::int64_t>());
    EXPECT_EQ(m.in, e["in"].get<std::int64_t>());
    EXPECT_EQ(m.out, e["out"].get<std::int64_t>());
    EXPECT_NEAR(m.scale, e["scale"].get<double>(), 1e-12);
    const auto d = reference_delta(adapter.read_a(m), adapter.read_b(m), m.rank, m.in, m.out, m.scale);
    double sum = 0, sq = 0;
    for (double x : d) sum += x, sq += x * x;
    const double fro = e["delta_fro"].get<double>();
    EXPECT_NEAR(sum, e["delta_sum"].get<double>(), 1e-9 * (1 + fro * std::sqrt(double(d.size()))));
    EXPECT_NEAR(std::sqrt(sq), fro, 1e-9 * (1 + fro));
  }
}

INSTANTIATE_TEST_SUITE_P(RealPeft, PeftFixture,
                         ::testing::Values("plain", "rslora", "rank-pattern", "regex-bf16"));

TEST(PeftAdapter, RejectsDoraWrittenByPeft) {
  try {
    PeftAdapter a(kPeft / "dora");
    FAIL();
  } catch (const unsupported_error& e) {
    EXPECT_NE(std::string(e.what()).find("DoRA"), std::string::npos);
  }
}

// Copies the plain fixture into a scratch folder with its weights replaced by `tensors`.
void write_variant(const std::filesystem::path& dir, const std::vector<TensorData>& tensors,
                   const std::string& config) {
  std::filesystem::create_directories(dir);
  test::write_bytes(dir / kAdapterConfigName, config);
  write_safetensors(dir / kAdapterWeightsName, tensors);
}

std::string error_of(const std::filesystem::path& dir) {
  try {
    PeftAdapter a(dir);
  } catch (const error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(PeftAdapter, RejectsInconsistentFactorsNamingTheModule) {
  test::TempDir tmp;
  const std::vector<float> a(2 * 4), b(3 * 2), b3(3 * 3);
  auto bytes = [](const std::vector<float>& v) { return std::as_bytes(std::span(v)); };
  const std::string cfg = R"({"peft_type":"LORA","r":2,"lora_alpha":2,"target_modules":["q_proj"]})";
  const std::string pa = "base_model.model.layers.0.q_proj.lora_A.weight";
  const std::string pb = "base_model.model.layers.0.q_proj.lora_B.weight";

  write_variant(tmp / "missing-b", {{{pa, DType::F32, {2, 4}}, bytes(a)}}, cfg);
  EXPECT_NE(error_of(tmp / "missing-b").find("module 'layers.0.q_proj' has lora_A but no lora_B"),
            std::string::npos);
  write_variant(tmp / "ranks", {{{pa, DType::F32, {2, 4}}, bytes(a)}, {{pb, DType::F32, {3, 3}}, bytes(b3)}}, cfg);
  EXPECT_NE(error_of(tmp / "ranks").find("ranks differ"), std::string::npos);
  const std::string cfg_r3 = R"({"peft_type":"LORA","r":3,"target_modules":["q_proj"]})";
  write_variant(tmp / "config-rank", {{{pa, DType::F32, {2, 4}}, bytes(a)}, {{pb, DType::F32, {3, 2}}, bytes(b)}}, cfg_r3);
  EXPECT_NE(error_of(tmp / "config-rank").find("has rank 2 but adapter_config.json gives r = 3"),
            std::string::npos);
  const std::string cfg_k = R"({"peft_type":"LORA","r":2,"target_modules":["k_proj"]})";
  write_variant(tmp / "untargeted", {{{pa, DType::F32, {2, 4}}, bytes(a)}, {{pb, DType::F32, {3, 2}}, bytes(b)}}, cfg_k);
  EXPECT_NE(error_of(tmp / "untargeted").find("not selected by target_modules"), std::string::npos);
  write_variant(tmp / "embedding",
                {{{"base_model.model.embed.lora_embedding_A", DType::F32, {2, 4}}, bytes(a)}}, cfg);
  EXPECT_NE(error_of(tmp / "embedding").find("embedding LoRA is not supported"), std::string::npos);
  write_variant(tmp / "stray", {{{"base_model.model.x.weight", DType::F32, {2, 4}}, bytes(a)}}, cfg);
  EXPECT_NE(error_of(tmp / "stray").find("is not a LoRA factor"), std::string::npos);
  EXPECT_NE(error_of(tmp / "nothing-here").find("not a folder"), std::string::npos);
}

TEST(PeftAdapter, WrittenAdaptersReadBackWithUnitScaleAndMixedRanks) {
  test::TempDir tmp;
  std::vector<LoraModuleData> mods;
  for (int layer = 0; layer < 2; ++layer)
    for (const char* name : {"q_proj", "v_proj"}) {
      const std::int64_t r = (layer == 1 && std::string(name) == "v_proj") ? 3 : 2;
      LoraModuleData m{"model.layers." + std::to_string(layer) + ".self_attn." + name, r, 8, 6, {}, {}};
      for (std::int64_t i = 0; i < r * 8; ++i) m.a.push_back(float(i % 5) - 2.0f + layer);
      for (std::int64_t i = 0; i < 6 * r; ++i) m.b.push_back(0.25f * float(i % 3));
      mods.push_back(m);
    }
  write_peft_adapter(tmp / "out", mods, {.base_model_name_or_path = "tiny"});
  const PeftAdapter back(tmp / "out");
  ASSERT_EQ(back.modules().size(), 4u);
  for (const auto& m : mods) {
    const auto* got = back.find(m.path);
    ASSERT_NE(got, nullptr) << m.path;
    EXPECT_EQ(got->rank, m.rank);
    EXPECT_DOUBLE_EQ(got->scale, 1.0) << m.path;
    EXPECT_EQ(back.read_a(*got), m.a);
    EXPECT_EQ(back.read_b(*got), m.b);
  }
  EXPECT_THROW(write_peft_adapter(tmp / "out", mods, {}), io_error);  // exists, no overwrite
}

// PEFT itself loads an adapter revmerge wrote onto the tiny model and applies the same delta.
TEST(PeftAdapter, PeftLoadsWhatRevmergeWrites) {
  REVMERGE_PYTHON_OR_SKIP("peft, torch, transformers");
  test::TempDir tmp;
  const PeftAdapter src(kPeft / "rank-pattern");
  std::vector<LoraModuleData> mods;
  for (const auto& m : src.modules()) {
    LoraModuleData d{m.path, m.rank, m.in, m.out, src.read_a(m), src.read_b(m)};
    for (auto& x : d.b) x = static_cast<float>(x * m.scale);  // fold the scale into B
    mods.push_back(std::move(d));
  }
  write_peft_adapter(tmp / "out", mods, {});
  const auto cmd = std::string("python3 ") + REVMERGE_SOURCE_DIR + "/tools/check_peft_load.py " +
                   (tmp / "out").string() + " " + (kPeft / "rank-pattern").string();
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

}  // namespace
}  // namespace revmerge
