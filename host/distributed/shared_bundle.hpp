#pragma once
// A bundle written by several workers at once (distributed/shared_output.hpp): worker 0 stages
// the folder and lays out the tensors file; every worker writes its own tensors into that one
// file (or into a shard of its own); worker 0 commits once all have synced theirs.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/atomic_output.hpp"
#include "distributed/shared_output.hpp"
#include "revmerge/bundle.hpp"
#include "revmerge/checkpoint.hpp"
#include "revmerge/peers.hpp"
#include "revmerge/safetensors.hpp"

namespace revmerge {

/// `merge --shard-per-rank`: each worker writes its own modules' tensors into a shard of its own
/// (bundle-0000k-of-0000n.safetensors, k among the workers that hold any) rather than into the
/// one shared file; worker 0 writes the index. The modules in plan order with the bytes their
/// shares are balanced by (share_of), so that every worker knows every tensor's shard.
struct BundleShards {
  std::vector<std::string> module_paths;
  std::vector<std::uint64_t> module_bytes;
};

class SharedBundle {
 public:
  /// Stages `out` (worker 0) and opens its tensors file, laid out for `specs`, on every worker
  /// (with `shards`: this worker's shard, laid out for its tensors). Without peers it is an
  /// ordinary staged bundle. `prepare` runs first on every worker (what must succeed everywhere
  /// before an output exists, as a memory plan), agreed with the rest.
  SharedBundle(Peers* peers, const std::filesystem::path& out, bool overwrite, std::vector<TensorSpec> specs,
               const std::map<std::string, std::string>& metadata, const std::function<void()>& prepare = {},
               const std::optional<BundleShards>& shards = std::nullopt);

  /// Where this worker writes its tensors (usage_error for a worker that holds none).
  SafetensorsWriter& writer();
  /// This worker creates and commits the output (worker 0, or the only one).
  bool first() const { return steps_.first(); }
  /// The bytes of the file this worker wrote (its shard, or the one file); after commit().
  std::uint64_t bytes_written() const;

  /// Runs `write` (this worker's share of the tensors), then syncs them; agreed.
  void write_share(const std::function<void()>& write);
  /// Every worker's manifest `part` (its modules; the rest of each part the same) joined into
  /// one, modules in rank order, on every worker.
  BundleManifest gather_modules(const BundleManifest& part);
  /// Worker 0 commits the tensors (the others' counted as theirs; with shards, the index), the
  /// manifest and the recipe, then the folder; agreed.
  void commit(const BundleManifest& manifest, const std::string& recipe);

 private:
  // The shard layout: each spec's owner, the shard names by worker ("" for one that holds none).
  void lay_out_shards(const std::vector<TensorSpec>& specs, const BundleShards& shards);
  void open_shard(const std::filesystem::path& dir, const std::map<std::string, std::string>& metadata);

  SharedOutput steps_;
  std::optional<StagedDir> staged_;
  std::optional<SafetensorsWriter> writer_;
  std::vector<std::string> others_wrote_;  // worker 0: the tensors the other workers wrote
  bool sharded_ = false;
  std::vector<TensorSpec> mine_;           // sharded: this worker's tensors
  std::vector<std::string> shard_names_;   // sharded: by worker
  ShardIndex index_;                       // sharded: every tensor's shard
};

}  // namespace revmerge
