// What an adapter of a fine-tune's linear modules leaves out: `compress` names every tensor it
// does not carry where the fine-tune differs from the base — changed anywhere (the last element
// too), resized, only in one of them, a module left out by --exclude — and not those equal in
// value, stored in another dtype.
#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "methods/lowrank/left_out.hpp"
#include "revmerge/compress.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/safetensors.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

struct Tensor {
  std::vector<i64> shape;
  std::vector<float> values;
  DType dtype = DType::F32;
};

void write_model(const std::filesystem::path& dir, const std::map<std::string, Tensor>& tensors) {
  std::filesystem::create_directories(dir);
  test::write_bytes(dir / "config.json", "{\"model_type\": \"llama\"}");
  std::vector<std::vector<std::byte>> bytes;
  std::vector<TensorData> data;
  for (const auto& [name, t] : tensors) {
    auto& b = bytes.emplace_back(t.values.size() * dtype_size(t.dtype));
    convert_from_f32(t.values.data(), t.dtype, b.data(), t.values.size());
    data.push_back({{name, t.dtype, t.shape}, b});
  }
  write_safetensors(dir / "model.safetensors", data);
}

std::vector<float> counting(std::size_t n, float from = 1) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = from + float(i);
  return v;
}

// The base and fine-tune written into `tmp`, and compress's options over them at rank 2, one
// module excluded.
CompressOptions write_pair(const test::TempDir& tmp, const std::map<std::string, Tensor>& base,
                           const std::map<std::string, Tensor>& ft, const std::string& excluded) {
  write_model(tmp / "base", base);
  write_model(tmp / "ft", ft);
  CompressOptions o;
  o.base = tmp / "base";
  o.model = tmp / "ft";
  o.rank = 2;
  o.exclude = {excluded};
  o.out = tmp / "adapter";
  return o;
}

TEST(Compress, NamesWhatTheAdapterDoesNotCarry) {
  test::TempDir tmp;
  const std::string q0 = "model.layers.0.self_attn.q_proj.weight", q1 = "model.layers.1.self_attn.q_proj.weight";
  const std::string norm0 = "model.layers.0.input_layernorm.weight";
  std::map<std::string, Tensor> base = {
      {q0, {{6, 4}, counting(24)}},
      {q1, {{6, 4}, counting(24)}},
      {norm0, {{4}, counting(4)}},
      {"model.norm.weight", {{4}, counting(4)}},
      {"model.embed_tokens.weight", {{10, 4}, counting(40)}},
      {"lm_head.weight", {{10, 4}, counting(40)}},
      {"model.rotary.inv_freq", {{2}, counting(2)}},
  };
  auto ft = base;
  ft[q0].values[5] += 1;
  ft[q1].values[7] += 1;
  ft[norm0].values.back() += 0.5f;                                // changed in its last element
  ft["model.embed_tokens.weight"] = {{12, 4}, counting(48)};      // two tokens added
  ft["lm_head.weight"].dtype = DType::BF16;                       // equal in value (small integers)
  ft.erase("model.rotary.inv_freq");
  ft["score.weight"] = {{3, 4}, counting(12)};                    // a classifier the fine-tune added
  auto o = write_pair(tmp, base, ft, "model.layers.1.self_attn.q_proj");
  const auto r = compress_checkpoint(o);
  std::map<std::string, std::string> got;
  for (const auto& t : r.left_out) got[t.tensor] = t.why;
  const std::map<std::string, std::string> want = {
      {q1, "changed"},
      {norm0, "changed"},
      {"model.embed_tokens.weight", "shape 10 × 4 → 12 × 4"},
      {"model.rotary.inv_freq", "only in the base"},
      {"score.weight", "only in the fine-tune"},
  };
  EXPECT_EQ(got, want);
  ASSERT_EQ(r.left_out.size(), want.size());
  EXPECT_EQ(r.left_out.back().tensor, "score.weight") << "the fine-tune's own come last";
  EXPECT_EQ(describe_left_out(r.left_out, 2),
            "5 tensors (model.embed_tokens.weight: shape 10 × 4 → 12 × 4, " + norm0 + ": changed, and 3 more)");
  // The fine-tune's own linear modules only: nothing to say.
  o.exclude.clear();
  o.model = tmp / "base";
  o.out = tmp / "same";
  EXPECT_TRUE(compress_checkpoint(o).left_out.empty());
}

// --save-changed: the changed modules PEFT can keep whole go into the adapter as modules_to_save
// (every tensor of each, the fine-tune's bytes); a module named like a compressed one (PEFT makes
// it a LoRA layer), a tensor only in the base and a compressed module's changed bias stay named.
TEST(Compress, SaveChangedKeepsWholeWhatPeftCan) {
  test::TempDir tmp;
  const std::string q0 = "model.layers.0.self_attn.q_proj", q1 = "model.layers.1.self_attn.q_proj";
  const std::string norm0 = "model.layers.0.input_layernorm";
  std::map<std::string, Tensor> base = {
      {q0 + ".weight", {{6, 4}, counting(24)}},
      {q0 + ".bias", {{6}, counting(6)}},
      {q1 + ".weight", {{6, 4}, counting(24)}},
      {norm0 + ".weight", {{4}, counting(4)}},
      {norm0 + ".bias", {{4}, counting(4)}},
      {"model.embed_tokens.weight", {{10, 4}, counting(40)}},
      {"model.rotary.inv_freq", {{2}, counting(2)}},
  };
  auto ft = base;
  ft[q0 + ".weight"].values[5] += 1;
  ft[q0 + ".bias"].values[0] += 1;                             // a compressed module's bias
  ft[q1 + ".weight"].values[7] += 1;                           // excluded, but named q_proj
  ft[norm0 + ".weight"].values.back() += 0.5f;                 // its bias unchanged: kept too
  ft["model.embed_tokens.weight"] = {{12, 4}, counting(48)};   // two tokens added
  ft.erase("model.rotary.inv_freq");
  ft["score.weight"] = {{3, 4}, counting(12, 7)};              // a classifier the fine-tune added
  auto o = write_pair(tmp, base, ft, q1);
  o.save_changed = true;
  const auto r = compress_checkpoint(o);
  EXPECT_EQ(r.modules_kept_whole, (std::vector<std::string>{"model.embed_tokens", norm0, "score"}));
  std::map<std::string, std::string> kept, left;
  for (const auto& t : r.kept_whole) kept[t.tensor] = t.why;
  for (const auto& t : r.left_out) left[t.tensor] = t.why;
  EXPECT_EQ(kept, (std::map<std::string, std::string>{{"model.embed_tokens.weight", "shape 10 × 4 → 12 × 4"},
                                                      {norm0 + ".weight", "changed"},
                                                      {norm0 + ".bias", "kept with its module"},
                                                      {"score.weight", "only in the fine-tune"}}));
  EXPECT_EQ(left, (std::map<std::string, std::string>{{q0 + ".bias", "changed"},
                                                      {q1 + ".weight", "changed"},
                                                      {"model.rotary.inv_freq", "only in the base"}}));
  // The adapter: PEFT's names and the fine-tune's values, its modules in modules_to_save.
  const PeftAdapter a(o.out);
  EXPECT_EQ(a.config().modules_to_save, r.modules_kept_whole);
  EXPECT_EQ(a.saved_module_tensors().size(), 4u);
  const SafetensorsFile file(o.out / kAdapterWeightsName);
  EXPECT_EQ(file.read_f32("base_model.model.score.weight"), ft["score.weight"].values);
  EXPECT_EQ(file.read_f32("base_model.model.model.embed_tokens.weight"), ft["model.embed_tokens.weight"].values);
  EXPECT_EQ(file.read_f32("base_model.model." + norm0 + ".weight"), ft[norm0 + ".weight"].values);
  ASSERT_NE(a.find(q0), nullptr);
  EXPECT_EQ(a.find(q1), nullptr);
}

}  // namespace
}  // namespace revmerge
