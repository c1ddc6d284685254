#pragma once
/// \file
/// Hugging Face model folders: `config.json` plus `model.safetensors` or sharded safetensors.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "revmerge/checkpoint.hpp"

namespace revmerge {

/// A linear layer's weight inside a transformer block: `out × in`, as nn.Linear stores it (a
/// model that stores_weights_transposed() holds the tensor as in × out).
struct LinearWeight {
  std::string tensor;   ///< "model.layers.3.self_attn.q_proj.weight"
  std::string path;     ///< module path, "model.layers.3.self_attn.q_proj"
  int layer = -1;       ///< block index
  std::string name;     ///< "self_attn.q_proj"
  std::int64_t out = 0, in = 0;
  DType dtype = DType::F32;
  /// The file holds it in × out (transformers' Conv1D, HfModel::stores_weights_transposed).
  bool stored_in_by_out = false;

  /// The tensor's shape as its file holds it, row-major rows × cols: out × in, or in × out.
  std::int64_t rows() const noexcept { return stored_in_by_out ? in : out; }
  std::int64_t cols() const noexcept { return stored_in_by_out ? out : in; }
};

/// The config.json fields revmerge reports; absent ones stay empty / zero.
struct HfModelConfig {
  std::string model_type;
  std::vector<std::string> architectures;
  std::int64_t hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0, num_key_value_heads = 0, vocab_size = 0;
  std::string torch_dtype;
};

/// An opened model folder. Throws io_error / format_error naming the folder or file.
class HfModel {
 public:
  explicit HfModel(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const noexcept { return dir_; }
  const HfModelConfig& config() const noexcept { return config_; }
  const Checkpoint& checkpoint() const noexcept { return checkpoint_; }
  /// 2-D `.weight` tensors inside numbered blocks, sorted by (layer, name): the weights that
  /// LoRA adapts and that PT-SVD compresses. Embeddings, norms and the head are not listed.
  const std::vector<LinearWeight>& linears() const noexcept { return linears_; }
  /// Whether the blocks' weights are transformers' Conv1D, stored in × out (GPT-2 and its
  /// family, by config.json's model_type): their LoRA adapters say fan_in_fan_out.
  bool stores_weights_transposed() const;

 private:
  std::filesystem::path dir_;
  HfModelConfig config_;
  Checkpoint checkpoint_;
  std::vector<LinearWeight> linears_;
};

}  // namespace revmerge
