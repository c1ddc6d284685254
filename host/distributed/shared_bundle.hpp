#pragma once
// A bundle written by several workers at once (distributed/shared_output.hpp): worker 0 stages
// the folder and lays out the tensors file; every worker writes its own tensors into that one
// file; worker 0 commits once all have synced theirs.
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/atomic_output.hpp"
#include "distributed/shared_output.hpp"
#include "revmerge/bundle.hpp"
#include "revmerge/peers.hpp"
#include "revmerge/safetensors.hpp"

namespace revmerge {

class SharedBundle {
 public:
  /// Stages `out` (worker 0) and opens its tensors file, laid out for `specs`, on every worker.
  /// Without peers it is an ordinary staged bundle. `prepare` runs first on every worker (what
  /// must succeed everywhere before an output exists, as a memory plan), agreed with the rest.
  SharedBundle(Peers* peers, const std::filesystem::path& out, bool overwrite, std::vector<TensorSpec> specs,
               const std::map<std::string, std::string>& metadata, const std::function<void()>& prepare = {});

  SafetensorsWriter& writer() { return *writer_; }
  /// This worker creates and commits the output (worker 0, or the only one).
  bool first() const { return steps_.first(); }

  /// Runs `write` (this worker's share of the tensors), then syncs them; agreed.
  void write_share(const std::function<void()>& write);
  /// Every worker's manifest `part` (its modules; the rest of each part the same) joined into
  /// one, modules in rank order, on every worker.
  BundleManifest gather_modules(const BundleManifest& part);
  /// Worker 0 commits the tensors (the others' counted as theirs), the manifest and the recipe,
  /// then the folder; agreed.
  void commit(const BundleManifest& manifest, const std::string& recipe);

 private:
  SharedOutput steps_;
  std::optional<StagedDir> staged_;
  std::optional<SafetensorsWriter> writer_;
  std::vector<std::string> others_wrote_;  // worker 0: the tensors the other workers wrote
};

}  // namespace revmerge
