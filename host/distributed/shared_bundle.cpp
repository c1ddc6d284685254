#include "distributed/shared_bundle.hpp"

#include "core/interrupt.hpp"
#include "revmerge/recipe.hpp"

namespace revmerge {

SharedBundle::SharedBundle(Peers* peers, const std::filesystem::path& out, bool overwrite,
                           std::vector<TensorSpec> specs, const std::map<std::string, std::string>& metadata,
                           const std::function<void()>& prepare)
    : steps_(peers) {
  steps_.open(
      prepare,
      [&] {
        staged_.emplace(out, overwrite);
        writer_.emplace(staged_->path() / kBundleTensorsName, specs, metadata);
        return std::vector<std::string>{writer_->writing_path().string()};
      },
      [&](const std::vector<std::string>& files) {
        writer_.emplace(SafetensorsWriter::Join{}, files.at(0), out / kBundleTensorsName, std::move(specs), metadata);
      });
}

void SharedBundle::write_share(const std::function<void()>& write) {
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
    for (const auto& n : others_wrote_) writer_->written_elsewhere(n);
    writer_->commit();
    write_file_atomic(staged_->path() / kBundleManifestName, manifest_to_json(manifest), false);
    write_file_atomic(staged_->path() / kRecipeName, recipe, false);
    staged_->commit();
  });
}

}  // namespace revmerge
