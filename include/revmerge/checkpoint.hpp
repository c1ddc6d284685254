#pragma once
/// \file
/// Checkpoints made of one or more safetensors files: a single `model.safetensors`, or shards
/// listed by `model.safetensors.index.json` (the Hugging Face layout).
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "revmerge/safetensors.hpp"

namespace revmerge {

/// Name of the index file of a sharded checkpoint.
inline constexpr const char* kShardIndexName = "model.safetensors.index.json";

/// Contents of a shard index: tensor name -> shard file name (a plain name in the same folder).
struct ShardIndex {
  std::uint64_t total_size = 0;  ///< metadata.total_size: sum of the tensors' byte sizes
  std::map<std::string, std::string> weight_map;
};

/// Reads and validates an index file (JSON object with a string-to-string "weight_map"; shard
/// names without path separators). Throws format_error naming the file.
ShardIndex read_shard_index(const std::filesystem::path& path);

/// The same from the index's text; `where` names the source in messages.
ShardIndex parse_shard_index(const std::string& text, const std::string& where);

/// Serialises an index the way transformers writes it.
std::string shard_index_json(const ShardIndex& index);

/// One tensor of a checkpoint and the file holding it.
struct CheckpointTensor {
  const SafetensorsFile* file;
  const TensorInfo* info;
};

/// All files of a checkpoint, opened and validated; tensor names are unique across shards and
/// every index entry is present in its shard (and vice versa).
class Checkpoint {
 public:
  /// `path` is a folder (holding model.safetensors or the index), a .safetensors file, or an
  /// index file. Throws io_error / format_error.
  explicit Checkpoint(const std::filesystem::path& path);

  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const noexcept { return files_; }
  /// What it was opened from (a folder, a file or an index), for messages.
  const std::filesystem::path& path() const noexcept { return path_; }
  /// The index file when sharded, empty otherwise.
  const std::filesystem::path& index_path() const noexcept { return index_path_; }
  /// Every tensor, in shard order then data order.
  const std::vector<CheckpointTensor>& tensors() const noexcept { return tensors_; }
  const CheckpointTensor* find(const std::string& name) const noexcept;
  /// Throws format_error naming the checkpoint when absent.
  const CheckpointTensor& at(const std::string& name) const;
  std::uint64_t total_bytes() const noexcept;
  /// SafetensorsFile::check_intact() of every file: after reading their bytes.
  void check_intact() const;

 private:
  std::filesystem::path path_;
  std::filesystem::path index_path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<CheckpointTensor> tensors_;
  std::map<std::string, std::size_t> by_name_;
};

/// Writes a checkpoint into `dir` (which must exist; files in it are not overwritten), split
/// into shards of at most `max_shard_bytes` of tensor data each (a tensor larger than that gets
/// a shard of its own), keeping the declared order. One shard is written as model.safetensors
/// without an index; more as model-0000i-of-0000n.safetensors plus the index. Each file appears
/// only when complete. Write data with write()/write_f32() in any order, then commit().
class ShardedWriter {
 public:
  /// `starts`: indices of specs that begin a new shard whatever the size (one shard per worker
  /// of a merge: `--shard-per-rank`).
  ShardedWriter(const std::filesystem::path& dir, const std::vector<TensorSpec>& specs,
                std::uint64_t max_shard_bytes,
                const std::map<std::string, std::string>& metadata = {{"format", "pt"}},
                const std::vector<std::size_t>& starts = {});
  void write(const std::string& name, std::span<const std::byte> data);
  /// `threads`: the conversion to the declared dtype on that many OpenMP threads.
  void write_f32(const std::string& name, std::span<const float> values, int threads = 1);
  /// Part of a tensor (SafetensorsWriter::write_part / write_f32_part).
  void write_part(const std::string& name, std::uint64_t offset, std::span<const std::byte> data);
  void write_f32_part(const std::string& name, std::uint64_t first, std::span<const float> values,
                      int threads = 1);
  /// Converted values written behind the caller, every shard through one queue of at most
  /// `bytes` (SafetensorsWriter::write_behind).
  void write_behind(std::uint64_t bytes);
  void commit();
  std::size_t shard_count() const noexcept { return writers_.size(); }

  /// Joins the shards another writer with the same arguments is writing (in another process:
  /// its writing_paths()), to write some of the tensors (SafetensorsWriter's Join); commit()
  /// then syncs what this writer wrote and writes no index.
  struct Join {};
  ShardedWriter(Join, const std::filesystem::path& dir, const std::vector<TensorSpec>& specs,
                std::uint64_t max_shard_bytes, const std::vector<std::filesystem::path>& writing,
                const std::map<std::string, std::string>& metadata = {{"format", "pt"}},
                const std::vector<std::size_t>& starts = {});
  /// Each shard's name while it is written.
  std::vector<std::filesystem::path> writing_paths() const;
  /// The tensors written here so far; tensor `name` counted as written by another writer.
  std::vector<std::string> written_names() const;
  void written_elsewhere(const std::string& name);

 private:
  // The shards' layout: their names, which tensors each holds, the index; the specs per shard.
  std::vector<std::vector<TensorSpec>> lay_out(const std::vector<TensorSpec>& specs, std::uint64_t max_shard_bytes,
                                               const std::vector<std::size_t>& starts);

  bool joined_ = false;
  std::filesystem::path dir_;
  ShardIndex index_;
  std::vector<std::string> shard_names_;
  std::vector<SafetensorsWriter> writers_;
  std::map<std::string, std::size_t> shard_of_;

  std::size_t shard(const std::string& name) const;  ///< usage_error for an undeclared tensor
};

}  // namespace revmerge
