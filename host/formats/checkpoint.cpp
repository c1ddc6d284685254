#include "revmerge/checkpoint.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <set>

#include "core/atomic_output.hpp"
#include "core/json_file.hpp"
#include "revmerge/error.hpp"

namespace fs = std::filesystem;

namespace revmerge {

ShardIndex read_shard_index(const fs::path& path) {
  return parse_shard_index(read_text_file(path), path.string());
}

ShardIndex parse_shard_index(const std::string& text, const std::string& where) {
  const auto j = parse_json_text(text, where);
  if (!j.is_object()) throw format_error(where + ": index is not a JSON object");
  const auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object())
    throw format_error(where + ": missing object 'weight_map'");
  ShardIndex index;
  for (const auto& [name, file] : wm->items()) {
    if (!file.is_string())
      throw format_error(where + ": weight_map['" + name + "'] is not a string");
    const auto shard = file.get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
      throw format_error(where + ": weight_map['" + name + "'] = '" + shard +
                         "' is not a file name in the checkpoint's folder");
    index.weight_map.emplace(name, shard);
  }
  if (const auto meta = j.find("metadata"); meta != j.end() && meta->is_object()) {
    if (const auto ts = meta->find("total_size"); ts != meta->end()) {
      if (!ts->is_number_unsigned())
        throw format_error(where + ": metadata.total_size is not a non-negative integer");
      index.total_size = ts->get<std::uint64_t>();
    }
  }
  return index;
}

std::string shard_index_json(const ShardIndex& index) {
  nlohmann::ordered_json j;
  j["metadata"] = {{"total_size", index.total_size}};
  j["weight_map"] = index.weight_map;
  return j.dump(2) + "\n";
}

Checkpoint::Checkpoint(const fs::path& path) : path_(path) {
  fs::path single;
  if (fs::is_directory(path)) {
    if (fs::exists(path / kShardIndexName))
      index_path_ = path / kShardIndexName;
    else if (fs::exists(path / "model.safetensors"))
      single = path / "model.safetensors";
    else if (fs::exists(path / "pytorch_model.bin") || fs::exists(path / "pytorch_model.bin.index.json"))
      throw unsupported_error(path.string() + ": holds PyTorch pickle weights (pytorch_model.bin), "
                              "which revmerge does not read (a pickle can run code); save the model "
                              "as safetensors first (transformers: save_pretrained(dir, "
                              "safe_serialization=True))");
    else
      throw io_error(path.string() + ": neither model.safetensors nor " + kShardIndexName +
                     " is in this folder");
  } else if (path.string().ends_with(".index.json")) {
    index_path_ = path;
  } else {
    single = path;
  }

  if (!single.empty()) {
    files_.push_back(std::make_unique<SafetensorsFile>(single));
  } else {
    const auto index = read_shard_index(index_path_);
    std::set<std::string> shard_names;
    for (const auto& [_, shard] : index.weight_map) shard_names.insert(shard);
    std::map<std::string, const SafetensorsFile*> by_shard;
    for (const auto& shard : shard_names) {
      files_.push_back(std::make_unique<SafetensorsFile>(index_path_.parent_path() / shard));
      by_shard[shard] = files_.back().get();
    }
    for (const auto& [name, shard] : index.weight_map)
      if (by_shard[shard]->find(name) == nullptr)
        throw format_error(index_path_.string() + ": tensor '" + name + "' is mapped to " +
                           shard + ", which does not hold it");
    for (const auto& f : files_)
      for (const auto& t : f->tensors())
        if (auto it = index.weight_map.find(t.name);
            it == index.weight_map.end() || by_shard[it->second] != f.get())
          throw format_error(f->path().string() + ": tensor '" + t.name + "' is not listed for " +
                             "this shard in " + index_path_.string());
  }
  for (const auto& f : files_) {
    for (const auto& t : f->tensors()) {
      if (!by_name_.emplace(t.name, tensors_.size()).second)
        throw format_error(f->path().string() + ": tensor '" + t.name +
                           "' also appears in another shard");
      tensors_.push_back({f.get(), &t});
    }
  }
}

const CheckpointTensor* Checkpoint::find(const std::string& name) const noexcept {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const CheckpointTensor& Checkpoint::at(const std::string& name) const {
  if (const auto* t = find(name)) return *t;
  throw format_error(path_.string() + ": no tensor named '" + name + "'");
}

std::uint64_t Checkpoint::total_bytes() const noexcept {
  std::uint64_t n = 0;
  for (const auto& t : tensors_) n += t.info->nbytes();
  return n;
}

void Checkpoint::check_intact() const {
  for (const auto& f : files_) f->check_intact();
}

std::vector<std::vector<TensorSpec>> ShardedWriter::lay_out(const std::vector<TensorSpec>& specs,
                                                             std::uint64_t max_shard_bytes,
                                                             const std::vector<std::size_t>& starts) {
  if (max_shard_bytes == 0) throw usage_error("shard size limit must be positive");
  const std::set<std::size_t> begins(starts.begin(), starts.end());
  std::vector<std::vector<TensorSpec>> shards;
  std::uint64_t in_shard = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const auto& spec = specs[i];
    const auto bytes = spec.nbytes();
    if (shards.empty() || (in_shard > 0 && in_shard + bytes > max_shard_bytes) ||
        (begins.count(i) && !shards.back().empty())) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(spec);
    in_shard += bytes;
    index_.total_size += bytes;
  }
  if (shards.empty()) shards.emplace_back();
  const auto n = shards.size();
  for (std::size_t i = 0; i < n; ++i) {
    shard_names_.push_back(n == 1 ? std::string("model.safetensors")
                                  : fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n));
    for (const auto& spec : shards[i]) {
      shard_of_[spec.name] = i;
      index_.weight_map[spec.name] = shard_names_[i];
    }
  }
  return shards;
}

ShardedWriter::ShardedWriter(const fs::path& dir, const std::vector<TensorSpec>& specs,
                             std::uint64_t max_shard_bytes,
                             const std::map<std::string, std::string>& metadata,
                             const std::vector<std::size_t>& starts)
    : dir_(dir) {
  const auto shards = lay_out(specs, max_shard_bytes, starts);
  for (std::size_t i = 0; i < shards.size(); ++i)
    writers_.emplace_back(dir_ / shard_names_[i], shards[i], metadata, false);
}

ShardedWriter::ShardedWriter(Join, const fs::path& dir, const std::vector<TensorSpec>& specs,
                             std::uint64_t max_shard_bytes, const std::vector<fs::path>& writing,
                             const std::map<std::string, std::string>& metadata,
                             const std::vector<std::size_t>& starts)
    : joined_(true), dir_(dir) {
  const auto shards = lay_out(specs, max_shard_bytes, starts);
  if (writing.size() != shards.size())
    throw usage_error(dir.string() + ": " + std::to_string(writing.size()) + " shards being written, " +
                      std::to_string(shards.size()) + " laid out here");
  for (std::size_t i = 0; i < shards.size(); ++i)
    writers_.emplace_back(SafetensorsWriter::Join{}, writing[i], dir_ / shard_names_[i], shards[i], metadata);
}

std::vector<fs::path> ShardedWriter::writing_paths() const {
  std::vector<fs::path> paths;
  for (const auto& w : writers_) paths.push_back(w.writing_path());
  return paths;
}

std::vector<std::string> ShardedWriter::written_names() const {
  std::vector<std::string> names;
  for (const auto& w : writers_)
    for (auto& n : w.written_names()) names.push_back(std::move(n));
  return names;
}

void ShardedWriter::written_elsewhere(const std::string& name) { writers_[shard(name)].written_elsewhere(name); }

void ShardedWriter::write(const std::string& name, std::span<const std::byte> data) {
  writers_[shard(name)].write(name, data);
}

void ShardedWriter::write_f32(const std::string& name, std::span<const float> values, int threads) {
  writers_[shard(name)].write_f32(name, values, threads);
}

void ShardedWriter::write_part(const std::string& name, std::uint64_t offset, std::span<const std::byte> data) {
  writers_[shard(name)].write_part(name, offset, data);
}

void ShardedWriter::write_behind(std::uint64_t bytes) {
  if (writers_.empty()) return;
  writers_.front().write_behind(bytes);
  for (std::size_t i = 1; i < writers_.size(); ++i) writers_[i].share_write_behind(writers_.front());
}

void ShardedWriter::write_f32_part(const std::string& name, std::uint64_t first,
                                   std::span<const float> values, int threads) {
  writers_[shard(name)].write_f32_part(name, first, values, threads);
}

std::size_t ShardedWriter::shard(const std::string& name) const {
  const auto it = shard_of_.find(name);
  if (it == shard_of_.end())
    throw usage_error(dir_.string() + ": tensor '" + name + "' was not declared");
  return it->second;
}

void ShardedWriter::commit() {
  for (auto& w : writers_) w.commit();
  if (writers_.size() > 1 && !joined_) write_file_atomic(dir_ / kShardIndexName, shard_index_json(index_), false);
}

}  // namespace revmerge
