// merge_classic's full-model outputs: the tokenizer and chat template a model gets, mergekit's
// MODEL+LORA inputs, and the shards a model is written in.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>

#include "methods/adapter_writer.hpp"
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

// mergekit's tokenizer_source and chat_template on copies of the golden models given tokenizers.
TEST(ClassicMerge, TokenizerSourceAndChatTemplate) {
  test::TempDir tmp;
  const auto golden = fs::path(REVMERGE_FIXTURES) / "golden" / "mergekit";
  const auto write = [](const fs::path& p, const std::string& text) { std::ofstream(p) << text; };
  const auto read = [](const fs::path& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string vocab = R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}})";
  const std::string base_t = "{% for m in messages %}base {{ m.content }}{% endfor %}";
  const std::string ft_t = "{% for m in messages %}tuned {{ m.content }}{% endfor %}";
  for (const auto* m : {"base", "ft0", "ft1"}) {
    fs::create_directories(tmp / m);
    for (const auto* f : {"config.json", "model.safetensors"}) fs::copy_file(golden / m / f, tmp / m / f);
    write(tmp / m / "tokenizer.json", vocab);
    write(tmp / m / "tokenizer_config.json",
          nlohmann::json{{"chat_template", std::string(m) == "base" ? base_t : ft_t}}.dump());
  }
  write(tmp / "ft0" / "special_tokens_map.json", R"({"bos_token": "a"})");
  ClassicMergeOptions o;
  o.method = ClassicMethod::task_arithmetic;
  o.tasks = {{"ft0", tmp / "ft0"}, {"ft1", tmp / "ft1"}};
  o.base = tmp / "base";
  o.out = tmp / "from_ft0";
  o.tokenizer_source = tmp / "ft0";
  merge_classic(o);
  EXPECT_EQ(read(tmp / "from_ft0" / "special_tokens_map.json"), R"({"bos_token": "a"})");
  EXPECT_EQ(read(tmp / "from_ft0" / "tokenizer_config.json"), read(tmp / "ft0" / "tokenizer_config.json"));
  // auto: the template two of the three inputs carry, in both places transformers reads it.
  o.tokenizer_source.clear();
  o.chat_template = "auto";
  o.out = tmp / "auto";
  merge_classic(o);
  EXPECT_EQ(read(tmp / "auto" / "chat_template.jinja"), ft_t);
  EXPECT_EQ(nlohmann::json::parse(read(tmp / "auto" / "tokenizer_config.json"))["chat_template"], ft_t);
  // auto where no input carries a template: merged without one, as mergekit does, and said.
  for (const auto* m : {"base", "ft0", "ft1"}) write(tmp / m / "tokenizer_config.json", "{}");
  o.out = tmp / "auto_none";
  const auto none = merge_classic(o);
  EXPECT_FALSE(fs::exists(tmp / "auto_none" / "chat_template.jinja"));
  EXPECT_FALSE(nlohmann::json::parse(read(tmp / "auto_none" / "tokenizer_config.json")).contains("chat_template"));
  ASSERT_EQ(none.warnings.size(), 1u);
  EXPECT_NE(none.warnings[0].find("no input carries a chat template"), std::string::npos);
  o.chat_template = "chatml";
  o.out = tmp / "never";
  expect_refused(o, "chat_template: 'chatml' names one of mergekit's bundled templates");
  o.chat_template.reset();
  write(tmp / "ft1" / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "c": 1}}})");
  o.tokenizer_source = tmp / "ft1";
  expect_refused(o, "its tokenizer's vocabulary is not");
}

// mergekit's MODEL+LORA: the model with the adapter merged in (W + s·B·A, in f64) is what the
// merge reads; the recipe names the input by what it was made of, and nothing is left beside
// the output.
TEST(ClassicMerge, ModelPlusLoraIsTheModelWithTheAdapterMergedIn) {
  test::TempDir tmp;
  // lora/a: alpha 8 at rank 4, a scale of 2
  const auto golden = fs::path(REVMERGE_FIXTURES) / "golden" / "mergekit";
  const auto model = golden / "base", adapter_dir = golden / "lora" / "a";
  const auto given = tmp / "base+a";  // as a config names it: a path that does not exist
  ClassicMergeOptions o;
  o.method = ClassicMethod::task_arithmetic;
  o.base = model;
  o.tasks = {{"chat", given}};
  o.weights = {0.5};
  o.with_lora[given] = {model, adapter_dir};
  o.out = tmp / "merged";
  merge_classic(o);
  const HfModel base(model), merged(o.out);
  const PeftAdapter adapter(adapter_dir);
  std::size_t adapted = 0;
  for (const auto& t : base.checkpoint().tensors()) {
    const auto& name = t.info->name;
    auto want = read_f64(base, name);
    const auto got = read_f64(merged, name);
    if (const auto* m = adapter.find(name.substr(0, name.size() - 7)); m && name.ends_with(".weight")) {
      const auto d = test::dense_delta(adapter.read_a(*m), adapter.read_b(*m), m->rank, m->in, m->out,
                                       0.5 * m->scale);
      for (std::size_t j = 0; j < want.size(); ++j) want[j] += d[j];
      ++adapted;
    }
    for (std::size_t j = 0; j < want.size(); ++j) ASSERT_NEAR(got[j], want[j], 1e-6) << name << " [" << j << "]";
  }
  EXPECT_EQ(adapted, adapter.modules().size());
  EXPECT_EQ(adapter.modules().front().scale, 2.0);
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator()), 1)
      << "the merged model's folder is left beside the output";
  const auto recipe = nlohmann::json::parse(std::ifstream(o.out / "revmerge_recipe.json"));
  EXPECT_EQ(recipe["inputs"][0]["path"], fs::absolute(model).lexically_normal().string() + "+" +
                                             fs::absolute(adapter_dir).lexically_normal().string());
  // An adapter of another model: refused by the tensor it does not fit, nothing written.
  o.with_lora[given] = {kExamples / "tiny-llama", adapter_dir};
  o.out = tmp / "never";
  expect_refused(o, "is this the adapter's base model? (MODEL+LORA)");
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator()), 1);
  // As the base: the model card's title names the model and the adapter, not the adapter alone.
  o.with_lora[given] = {model, adapter_dir};
  o.base = given;
  o.tasks = {{"ft0", golden / "ft0"}};
  o.out = tmp / "on-the-adapted-base";
  merge_classic(o);
  std::ifstream card_file(o.out / "README.md");
  const std::string card((std::istreambuf_iterator<char>(card_file)), std::istreambuf_iterator<char>());
  EXPECT_NE(card.find("\n# merge of fine-tunes of base+a\n"), std::string::npos) << card;
}

// The golden base as GPT-2's family stores its weights — every block's linear weight in × out,
// config.json's model_type "gpt2" — and the golden adapter lora/a as PEFT writes it for such a
// model (fan_in_fan_out: true): the same model and adapter, transposed.
void write_conv1d_copies(const fs::path& golden, const fs::path& model, const fs::path& adapter) {
  const HfModel base(golden / "base");
  auto config = nlohmann::json::parse(std::ifstream(golden / "base" / "config.json"));
  config["model_type"] = "gpt2";
  fs::create_directories(model);
  std::ofstream(model / "config.json") << config.dump();
  std::vector<std::vector<std::byte>> bytes;
  std::vector<TensorData> tensors;
  for (const auto& t : base.checkpoint().tensors()) {
    TensorSpec info{t.info->name, DType::F32, t.info->shape};
    auto v = read_f64(base, info.name);
    const bool linear = std::any_of(base.linears().begin(), base.linears().end(),
                                    [&](const LinearWeight& w) { return w.tensor == info.name; });
    if (linear) {  // out × in → in × out
      const auto out = info.shape[0], in = info.shape[1];
      std::vector<double> flipped(v.size());
      for (std::int64_t o = 0; o < out; ++o)
        for (std::int64_t i = 0; i < in; ++i) flipped[i * out + o] = v[o * in + i];
      v = std::move(flipped);
      info.shape = {in, out};
    }
    std::vector<float> f(v.begin(), v.end());
    auto& b = bytes.emplace_back(f.size() * 4);
    convert_from_f32(f.data(), DType::F32, b.data(), f.size());
    tensors.push_back({info, b});
  }
  write_safetensors(model / "model.safetensors", tensors);
  fs::copy(golden / "lora" / "a", adapter, fs::copy_options::recursive);
  auto adapter_config = nlohmann::json::parse(std::ifstream(adapter / "adapter_config.json"));
  adapter_config["fan_in_fan_out"] = true;
  std::ofstream(adapter / "adapter_config.json") << adapter_config.dump();
}

// MODEL+LORA where the model stores its weights in × out (GPT-2's Conv1D): the adapter's delta
// goes in transposed, W + (s·B·A)ᵀ, so the merge is the golden MODEL+LORA's transposed; an
// adapter whose fan_in_fan_out disagrees with the model's layout is refused by name.
TEST(ClassicMerge, ModelPlusLoraOfAConv1dModelAddsTheDeltaTransposed) {
  test::TempDir tmp;
  const auto golden = fs::path(REVMERGE_FIXTURES) / "golden" / "mergekit";
  write_conv1d_copies(golden, tmp / "gpt2", tmp / "gpt2-lora");
  ClassicMergeOptions o;
  o.method = ClassicMethod::linear;
  const auto given = tmp / "gpt2+lora";
  o.tasks = {{"adapted", given}};
  o.weights = {1.0};
  o.with_lora[given] = {tmp / "gpt2", tmp / "gpt2-lora"};
  o.out = tmp / "merged";
  merge_classic(o);
  auto linear = o;  // the same merge of the golden model and adapter as they are
  const auto plain = tmp / "base+a";
  linear.tasks = {{"adapted", plain}};
  linear.with_lora = {{plain, {golden / "base", golden / "lora" / "a"}}};
  linear.out = tmp / "merged-linear";
  merge_classic(linear);
  const HfModel got(o.out), want(linear.out);
  std::size_t flipped = 0;
  for (const auto& w : want.linears()) {
    const auto g = read_f64(got, w.tensor), x = read_f64(want, w.tensor);
    ASSERT_EQ(got.checkpoint().at(w.tensor).info->shape, (std::vector<std::int64_t>{w.in, w.out})) << w.tensor;
    for (std::int64_t r = 0; r < w.out; ++r)
      for (std::int64_t c = 0; c < w.in; ++c)
        ASSERT_NEAR(g[c * w.out + r], x[r * w.in + c], 1e-6 * (1 + std::abs(x[r * w.in + c]))) << w.tensor;
    flipped += w.in != w.out;
  }
  EXPECT_GT(flipped, 0u) << "no module whose transposition shows in its shape";
  // The adapter's flag against the model's layout, both ways.
  o.with_lora[given] = {golden / "base", tmp / "gpt2-lora"};
  o.out = tmp / "never";
  expect_refused(o, "says fan_in_fan_out: true, but");
  o.with_lora[given] = {tmp / "gpt2", golden / "lora" / "a"};
  expect_refused(o, "says fan_in_fan_out: false, but");
}

// --out-shard-size: the same tensors, in shards of at most that many bytes (a tensor larger
// than the limit alone in one), listed by an index.
TEST(ClassicMerge, ShardsOfAModelStayUnderTheirSize) {
  test::TempDir tmp;
  const auto golden = fs::path(REVMERGE_FIXTURES) / "golden" / "mergekit";
  ClassicMergeOptions o;
  o.method = ClassicMethod::task_arithmetic;
  o.base = golden / "base";
  o.tasks = {{"ft0", golden / "ft0"}, {"ft1", golden / "ft1"}};
  o.out = tmp / "whole";
  merge_classic(o);
  o.out = tmp / "sharded";
  o.max_shard_bytes = 4096;
  merge_classic(o);
  EXPECT_FALSE(fs::exists(o.out / "model.safetensors"));
  ASSERT_TRUE(fs::exists(o.out / "model.safetensors.index.json"));
  std::size_t shards = 0;
  for (const auto& e : fs::directory_iterator(o.out))
    if (e.path().extension() == ".safetensors") {
      ++shards;
      const SafetensorsFile f(e.path());
      std::size_t bytes = 0;
      for (const auto& t : f.tensors()) bytes += f.bytes(t).size();
      if (f.tensors().size() > 1) EXPECT_LE(bytes, 4096u) << e.path();
    }
  EXPECT_GT(shards, 2u);
  const HfModel whole(tmp / "whole"), sharded(o.out);
  ASSERT_EQ(whole.checkpoint().tensors().size(), sharded.checkpoint().tensors().size());
  for (const auto& t : whole.checkpoint().tensors())
    EXPECT_EQ(read_f64(whole, t.info->name), read_f64(sharded, t.info->name)) << t.info->name;
}

}  // namespace
}  // namespace revmerge
