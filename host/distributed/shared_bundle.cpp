#include "distributed/shared_bundle.hpp"

#include "core/interrupt.hpp"
#include "revmerge/error.hpp"
#include "revmerge/recipe.hpp"

namespace revmerge {

SharedBundle::SharedBundle(Peers* peers, const std::filesystem::path& out, bool overwrite,
                           std::vector<TensorSpec> specs, const std::map<std::string, std::string>& metadata,
                           const std::function<void()>& prepare, const std::optional<BundleShards>& shards)
    : steps_(peers) {
  // One worker's shard is the one file; shards are for several.
  if (shards && steps_.peers()) lay_out_shards(specs, *shards);
  steps_.open(
      prepare,
      [&] {
        staged_.emplace(out, overwrite);
        if (sharded_) {
          open_shard(staged_->path(), metadata);
          return std::vector<std::string>{staged_->path().string()};
        }
        writer_.emplace(staged_->path() / kBundleTensorsName, specs, metadata);
        return std::vector<std::string>{writer_->writing_path().string()};
      },
      [&](const std::vector<std::string>& files) {
        if (sharded_) return open_shard(files.at(0), metadata);  // worker 0's staged folder
        writer_.emplace(SafetensorsWriter::Join{}, files.at(0), out / kBundleTensorsName, std::move(specs), metadata);
      });
}

void SharedBundle::lay_out_shards(const std::vector<TensorSpec>& specs, const BundleShards& shards) {
  const int workers = steps_.peers()->size();
  std::vector<int> module_owner(shards.module_paths.size(), 0);
  for (int w = 0; w < workers; ++w) {
    const auto [first, last] = share_of(shards.module_bytes, w, workers);
    for (auto m = first; m < last; ++m) module_owner[m] = w;
  }
  // Specs come in plan order, each named "<module path>.lora_<side>.<part>" (bundle_tensor_name).
  std::vector<int> owner;
  std::size_t m = 0;
  for (const auto& spec : specs) {
    while (m < shards.module_paths.size() && !spec.name.starts_with(shards.module_paths[m] + ".lora_")) ++m;
    if (m == shards.module_paths.size())
      throw std::logic_error("bundle tensor '" + spec.name + "' is not in plan order");
    owner.push_back(module_owner[m]);
  }
  std::vector<bool> holds(static_cast<std::size_t>(workers), false);
  for (const int w : owner) holds[static_cast<std::size_t>(w)] = true;
  int count = 0, k = 0;
  for (const bool h : holds) count += h;
  for (int w = 0; w < workers; ++w) shard_names_.push_back(holds[w] ? bundle_shard_name(++k, count) : "");
  for (std::size_t i = 0; i < specs.size(); ++i) {
    index_.weight_map[specs[i].name] = shard_names_[static_cast<std::size_t>(owner[i])];
    index_.total_size += specs[i].nbytes();
    if (owner[i] == steps_.peers()->rank()) mine_.push_back(specs[i]);
  }
  sharded_ = true;
}

void SharedBundle::open_shard(const std::filesystem::path& dir, const std::map<std::string, std::string>& metadata) {
  const auto& name = shard_names_[static_cast<std::size_t>(steps_.peers()->rank())];
  if (!name.empty()) writer_.emplace(dir / name, mine_, metadata);
}

SafetensorsWriter& SharedBundle::writer() {
  if (!writer_) throw usage_error("this worker holds none of the bundle's tensors");
  return *writer_;
}

std::uint64_t SharedBundle::bytes_written() const { return writer_ ? writer_->file_size() : 0; }

void SharedBundle::write_share(const std::function<void()>& write) {
  if (sharded_) {  // each worker commits its own shard into the staged folder: nothing to tell worker 0
    agree_on(steps_.peers(), [&] {
      write();
      if (writer_) writer_->commit();
    });
    return;
  }
  others_wrote_ = steps_.write_share(
      write, [&] { writer_->commit(); }, [&] { return writer_->written_names(); });
}

BundleManifest SharedBundle::gather_modules(const BundleManifest& part) {
  if (!steps_.peers()) return part;
  const auto all = steps_.gather(manifest_to_json(part));
  BundleManifest whole = part;
  whole.modules.clear();
  for (std::size_t r = 0; r < all.size(); ++r) {
    auto p = parse_manifest(all[r], "the module entries of worker " + std::to_string(r));
    for (auto& bm : p.modules) whole.modules.push_back(std::move(bm));
  }
  return whole;
}

void SharedBundle::commit(const BundleManifest& manifest, const std::string& recipe) {
  steps_.commit([&] {
    throw_if_interrupted("merge");
    if (sharded_) {
      write_file_atomic(staged_->path() / kBundleIndexName, shard_index_json(index_), false);
    } else {
      for (const auto& n : others_wrote_) writer_->written_elsewhere(n);
      writer_->commit();
    }
    write_file_atomic(staged_->path() / kBundleManifestName, manifest_to_json(manifest), false);
    write_file_atomic(staged_->path() / kRecipeName, recipe, false);
    staged_->commit();
  });
}

}  // namespace revmerge
