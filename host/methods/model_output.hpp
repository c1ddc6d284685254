#pragma once
// A full Hugging Face model written from a base model: its config files copied, every tensor
// written (merged ones replaced), sharded the way transformers shards, all in one staged
// folder that appears only when complete.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "revmerge/hf_model.hpp"
#include "revmerge/peers.hpp"
#include "revmerge/rmm.hpp"

namespace revmerge {

/// Fills `values` (numel f32, contents unspecified on entry) with the output tensor `name` and
/// returns true, or returns false to copy the base tensor unchanged.
using TensorProducer = std::function<bool(const std::string& name, std::vector<float>& values)>;
/// Takes part of an output tensor: its elements [first, first + values.size()).
using PieceSink = std::function<void(std::uint64_t first, std::span<const float> values)>;
/// Gives the output tensor `name` (numel elements) to `sink` in parts, each element exactly
/// once, and returns true; or returns false, having given nothing, to copy the input tensor.
using PieceProducer = std::function<bool(const std::string& name, std::uint64_t numel, const PieceSink& sink)>;

struct ModelOutputOptions {
  std::optional<DType> dtype;  ///< float tensors' output dtype; default: the base tensor's
  bool overwrite = false;
  int threads = 1;  ///< for converting tensors to their written dtype
  /// Tensors copied from an input go in parts of about this many bytes, each part's pages
  /// dropped from the resident set once written (bounded memory for a 70B embedding).
  std::uint64_t piece_bytes = std::uint64_t{64} << 20;
  std::uint64_t max_shard_bytes = 5'000'000'000ull;  ///< transformers' default shard size
  /// Produced pieces are written behind the producer through a queue of at most this many bytes
  /// (ShardedWriter::write_behind), so that reading the next tensor overlaps the disk's writes
  /// of this one; 0: each piece written before its sink returns.
  std::uint64_t write_behind_bytes = 0;
  ProgressFn progress;
  /// Small files written into the folder beside the model: (name, text), e.g. the recipe.
  std::vector<std::pair<std::string, std::string>> extra_files;
  /// Layer stacking: config.json's num_hidden_layers, and the input layer each output layer
  /// comes from (its `layer_types` entry, where the config lists one per layer).
  std::optional<std::int64_t> num_hidden_layers;
  std::vector<std::int64_t> layer_sources;
  /// The folder the tokenizer files come from (empty: the config's folder); its vocabulary must
  /// be that folder's (format_error otherwise: embeddings are not remapped).
  std::filesystem::path tokenizer_from;
  /// A chat template (Jinja text) written into the output's tokenizer.
  std::optional<std::string> chat_template;
  /// The workers writing this model together (revmerge/peers.hpp): each produces a contiguous
  /// share of the tensors (balanced by bytes) into the shards worker 0 laid out; write_model is
  /// then collective and returns the count over all of them. Null: this process alone.
  Peers* peers = nullptr;
  /// With several workers: no shard holds two workers' tensors (each worker's first tensor
  /// starts a shard; `merge --shard-per-rank`), so every file is written from one machine.
  bool shard_per_rank = false;
};

/// A model folder's chat template: chat_template.jinja, or tokenizer_config.json's
/// "chat_template" string (empty when it has none).
std::string model_chat_template(const std::filesystem::path& dir);

/// One tensor of a written model: its name, dtype and shape as written, and the input tensor
/// copied where `produce` declines it (null: `produce` must give it).
struct OutputTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  const CheckpointTensor* source = nullptr;
};

/// Writes a model of `tensors` at `out`, with the small files of `config_from`'s folder.
/// Returns the number of tensors `produce` gave.
std::int64_t write_model(const HfModel& config_from, const std::vector<OutputTensor>& tensors,
                         const std::filesystem::path& out, const TensorProducer& produce,
                         const ModelOutputOptions& options);
/// The same with tensors produced in parts.
std::int64_t write_model(const HfModel& config_from, const std::vector<OutputTensor>& tensors,
                         const std::filesystem::path& out, const PieceProducer& produce,
                         const ModelOutputOptions& options);

/// Writes the model at `out`. Non-float tensors are always copied. Returns the number of
/// tensors `produce` replaced.
std::int64_t write_full_model(const HfModel& base, const std::filesystem::path& out,
                              const TensorProducer& produce, const ModelOutputOptions& options);
std::int64_t write_full_model(const HfModel& base, const std::filesystem::path& out,
                              const PieceProducer& produce, const ModelOutputOptions& options);

}  // namespace revmerge
