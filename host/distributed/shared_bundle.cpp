#include "distributed/shared_bundle.hpp"

#include "core/interrupt.hpp"
#include "distributed/agreement.hpp"
#include "revmerge/recipe.hpp"

namespace revmerge {
namespace {

// Names joined by newlines (tensor names hold none), and back.
std::string join_lines(const std::vector<std::string>& names) {
  std::string text;
  for (const auto& n : names) text += n + '\n';
  return text;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  std::size_t at = 0;
  for (auto nl = text.find('\n'); nl != std::string::npos; at = nl + 1, nl = text.find('\n', at))
    out.push_back(text.substr(at, nl - at));
  return out;
}

}  // namespace

SharedBundle::SharedBundle(Peers* peers, const std::filesystem::path& out, bool overwrite,
                           std::vector<TensorSpec> specs, const std::map<std::string, std::string>& metadata,
                           const std::function<void()>& prepare)
    : peers_(peers && peers->size() > 1 ? peers : nullptr), first_(!peers_ || peers_->rank() == 0) {
  agree_on(peers_, [&] {
    if (prepare) prepare();
    if (!first_) return;
    staged_.emplace(out, overwrite);
    writer_.emplace(staged_->path() / kBundleTensorsName, specs, metadata);
  });
  if (!peers_) return;
  // The others write into the file worker 0 made, under its temporary name.
  const auto where = peers_->all_gather(first_ ? writer_->writing_path().string() : std::string());
  agree_on(peers_, [&] {
    if (!first_) writer_.emplace(SafetensorsWriter::Join{}, where[0], out / kBundleTensorsName, std::move(specs), metadata);
  });
}

void SharedBundle::write_share(const std::function<void()>& write) {
  agree_on(peers_, [&] {
    write();
    if (!first_) writer_->commit();  // this worker's tensors synced; worker 0 renames the file
  });
  if (!peers_) return;
  const auto names = peers_->all_gather(first_ ? std::string() : join_lines(writer_->written_names()));
  if (!first_) return;
  for (std::size_t r = 1; r < names.size(); ++r)
    for (auto& n : split_lines(names[r])) others_wrote_.push_back(std::move(n));
}

BundleManifest SharedBundle::gather_modules(const BundleManifest& part) {
  if (!peers_) return part;
  const auto all = peers_->all_gather(manifest_to_json(part));
  BundleManifest whole = part;
  whole.modules.clear();
  for (std::size_t r = 0; r < all.size(); ++r) {
    auto p = parse_manifest(all[r], "the module entries of worker " + std::to_string(r));
    for (auto& bm : p.modules) whole.modules.push_back(std::move(bm));
  }
  return whole;
}

void SharedBundle::commit(const BundleManifest& manifest, const std::string& recipe) {
  agree_on(peers_, [&] {
    throw_if_interrupted("merge");
    if (!first_) return;
    for (const auto& n : others_wrote_) writer_->written_elsewhere(n);
    writer_->commit();
    write_file_atomic(staged_->path() / kBundleManifestName, manifest_to_json(manifest), false);
    write_file_atomic(staged_->path() / kRecipeName, recipe, false);
    staged_->commit();
  });
}

}  // namespace revmerge
