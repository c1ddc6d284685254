#include "revmerge/checkpoint.hpp"

#include <gtest/gtest.h>

#include <numeric>

#include "core/json_file.hpp"
#include "revmerge/error.hpp"
#include "revmerge/hf_model.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

const std::filesystem::path kSharded = std::filesystem::path(REVMERGE_FIXTURES) / "tiny-llama-sharded";

// transformers wrote these shards; expected.json holds what safetensors/torch read back.
TEST(Checkpoint, ReadsTheShardedCheckpointTransformersWrote) {
  const Checkpoint c(kSharded);
  const auto expected = read_json_file(kSharded / "expected.json")["tensors"];
  EXPECT_EQ(c.files().size(), 2u);
  ASSERT_EQ(c.tensors().size(), expected.size());
  for (const auto& [name, e] : expected.items()) {
    const auto& t = c.at(name);
    EXPECT_EQ(t.info->shape, e["shape"].get<std::vector<std::int64_t>>()) << name;
    EXPECT_EQ(t.file->path().filename(), e["file"].get<std::string>()) << name;
    const auto v = t.file->read_f64(name);
    const double sum = std::accumulate(v.begin(), v.end(), 0.0);
    EXPECT_NEAR(sum, e["sum"].get<double>(), 1e-9 * (1 + std::abs(sum))) << name;
  }
}

TEST(HfModel, EnumeratesTheLinearWeightsOfEachBlock) {
  const HfModel m(kSharded);
  EXPECT_EQ(m.config().model_type, "llama");
  EXPECT_EQ(m.config().num_hidden_layers, 2);
  ASSERT_EQ(m.linears().size(), 14u);  // 7 linear modules × 2 layers
  EXPECT_EQ(m.linears()[0].layer, 0);
  EXPECT_EQ(m.linears()[0].name, "mlp.down_proj");
  EXPECT_EQ(m.linears()[0].out, 32);
  EXPECT_EQ(m.linears()[0].in, 48);
  for (const auto& w : m.linears()) EXPECT_EQ(w.tensor.find("embed"), std::string::npos);
}

TEST(ShardedWriter, SplitsByTheLimitAndRoundTripsThroughTheIndex) {
  test::TempDir dir;
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 5; ++i) specs.push_back({"layer." + std::to_string(i) + ".w", DType::F32, {4, 4}});
  {
    ShardedWriter w(dir.path(), specs, /*max_shard_bytes=*/130);  // two 64-byte tensors a shard
    EXPECT_EQ(w.shard_count(), 3u);
    for (int i = 4; i >= 0; --i) {
      std::vector<float> v(16, float(i));
      w.write_f32("layer." + std::to_string(i) + ".w", v);
    }
    w.commit();
  }
  const auto index = read_shard_index(dir / kShardIndexName);
  EXPECT_EQ(index.total_size, 5u * 64);
  EXPECT_EQ(index.weight_map.at("layer.4.w"), "model-00003-of-00003.safetensors");
  const Checkpoint c(dir.path());
  for (int i = 0; i < 5; ++i)
    EXPECT_EQ(c.at("layer." + std::to_string(i) + ".w").file->read_f32("layer." + std::to_string(i) + ".w"),
              std::vector<float>(16, float(i)));
}

// The shards of one model written behind the caller through one queue (of one block here: every
// shard's parts take turns in it): the same files as written in line.
TEST(ShardedWriter, ShardsWrittenBehindThroughOneQueueAreTheSameFiles) {
  test::TempDir dir;
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 5; ++i) specs.push_back({"layer." + std::to_string(i) + ".w", DType::BF16, {1000, 700}});
  for (const std::uint64_t queue : {0, 1}) {
    const auto out = dir / ("q" + std::to_string(queue));
    std::filesystem::create_directory(out);
    ShardedWriter w(out, specs, /*max_shard_bytes=*/3'000'000);  // two tensors a shard
    ASSERT_EQ(w.shard_count(), 3u);
    if (queue) w.write_behind(queue);
    for (int i = 4; i >= 0; --i) {
      std::vector<float> v(700'000);
      for (std::size_t k = 0; k < v.size(); ++k) v[k] = static_cast<float>(k % 97) * 0.25f - static_cast<float>(i);
      w.write_f32("layer." + std::to_string(i) + ".w", v);
    }
    w.commit();
  }
  for (const auto& name : test::list_dir(dir / "q0"))
    EXPECT_EQ(test::read_bytes(dir / "q1" / name), test::read_bytes(dir / "q0" / name)) << name;
  EXPECT_EQ(test::list_dir(dir / "q1"), test::list_dir(dir / "q0"));
}

TEST(ShardedWriter, OneShardIsAPlainModelFile) {
  test::TempDir dir;
  ShardedWriter w(dir.path(), {{"x", DType::BF16, {3}}}, 1 << 20);
  w.write_f32("x", std::vector<float>{1, 2, 3});
  w.commit();
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"model.safetensors"});
}

// A folder of pickle weights is named for what it holds, not as a folder without a model.
TEST(Checkpoint, PickleWeightsAreRefusedByName) {
  test::TempDir dir;
  test::write_bytes(dir / "config.json", "{}");
  test::write_bytes(dir / "pytorch_model.bin", "not read");
  try {
    Checkpoint c(dir.path());
    ADD_FAILURE() << "accepted";
  } catch (const unsupported_error& e) {
    EXPECT_NE(std::string(e.what()).find("pytorch_model.bin"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("safe_serialization=True"), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, RejectsIndexesThatDisagreeWithTheirShards) {
  test::TempDir dir;
  {
    ShardedWriter w(dir.path(), {{"a", DType::F32, {1}}, {"b", DType::F32, {1}}}, 4);
    w.write_f32("a", std::vector<float>{1});
    w.write_f32("b", std::vector<float>{2});
    w.commit();
  }
  auto index = read_shard_index(dir / kShardIndexName);
  auto rewrite = [&](const ShardIndex& i) {
    test::write_bytes(dir / kShardIndexName, shard_index_json(i));
  };
  auto expect_message = [&](const std::string& fragment) {
    try {
      Checkpoint c(dir.path());
      ADD_FAILURE() << "accepted";
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  auto broken = index;
  broken.weight_map["a"] = index.weight_map["b"];  // points at the wrong shard
  rewrite(broken);
  expect_message("tensor 'a' is mapped to model-00002-of-00002.safetensors, which does not hold it");
  broken = index;
  broken.weight_map["a"] = "../escape.safetensors";
  rewrite(broken);
  expect_message("is not a file name in the checkpoint's folder");
  // A shard holding a tensor the index does not list for it.
  const std::vector<float> one = {1.0f};
  write_safetensors(dir / "model-00002-of-00002.safetensors",
                    {{{"b", DType::F32, {1}}, std::as_bytes(std::span(one))},
                     {{"c", DType::F32, {1}}, std::as_bytes(std::span(one))}},
                    {}, /*overwrite=*/true);
  rewrite(index);
  expect_message("tensor 'c' is not listed for this shard");
  test::write_bytes(dir / kShardIndexName, R"({"weight_map": {"a": 3}})");
  expect_message("weight_map['a'] is not a string");
}

}  // namespace
}  // namespace revmerge
