// Reading and writing PEFT LoRA adapter folders.
#include <algorithm>
#include <optional>
#include <map>
#include <nlohmann/json.hpp>

#include "core/atomic_output.hpp"
#include "core/json_file.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"

namespace fs = std::filesystem;

namespace revmerge {
namespace {

constexpr std::string_view kPrefix = "base_model.model.";
constexpr std::string_view kSuffixA = ".lora_A.weight";
constexpr std::string_view kSuffixB = ".lora_B.weight";

bool is_saved_module(const std::string& path, const std::vector<std::string>& modules_to_save) {
  for (const auto& m : modules_to_save)
    if (path == m || path.starts_with(m + ".") || path.find("." + m + ".") != std::string::npos ||
        path.ends_with("." + m))
      return true;
  return path.find(".modules_to_save.") != std::string::npos;
}

}  // namespace

std::pair<int, std::string> split_module_path(const std::string& path) {
  std::size_t start = 0;
  while (start < path.size()) {
    auto end = path.find('.', start);
    if (end == std::string::npos) end = path.size();
    const auto part = std::string_view(path).substr(start, end - start);
    if (!part.empty() && part.size() <= 9 &&
        std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
        end < path.size())
      return {std::stoi(std::string(part)), path.substr(end + 1)};
    start = end + 1;
  }
  return {-1, path};
}

PeftAdapter::PeftAdapter(const fs::path& dir) : dir_(dir) {
  if (!fs::is_directory(dir)) throw io_error(dir.string() + ": not a folder");
  const auto config_path = dir / kAdapterConfigName;
  if (!fs::exists(config_path)) {
    // A folder of adapter folders is the likeliest slip: say so, with what to pass instead.
    std::vector<std::string> inner;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.is_directory(ec) && fs::exists(e.path() / kAdapterConfigName, ec))
        inner.push_back(e.path().filename().string());
    if (!inner.empty()) {
      std::sort(inner.begin(), inner.end());
      throw io_error(dir.string() + ": holds " + std::to_string(inner.size()) + " adapter folder" +
                     (inner.size() == 1 ? "" : "s") + " (" + inner.front() +
                     (inner.size() > 1 ? ", …" : "") + "), not an adapter; pass them, e.g. " +
                     (dir / "*").string());
    }
    throw io_error(dir.string() + ": no " + kAdapterConfigName + " (not a PEFT adapter folder)");
  }
  config_ = parse_lora_config(read_text_file(config_path), config_path.string());
  const auto weights_path = dir / kAdapterWeightsName;
  if (!fs::exists(weights_path)) {
    if (fs::exists(dir / "adapter_model.bin"))
      throw unsupported_error(dir.string() + ": adapter_model.bin (pickle) is not read; "
                              "save the adapter with safe_serialization=True");
    throw io_error(dir.string() + ": no " + kAdapterWeightsName);
  }
  weights_ = std::make_unique<SafetensorsFile>(weights_path);
  const auto where = weights_path.string();

  std::map<std::string, LoraModule> by_path;
  for (const auto& t : weights_->tensors()) {
    std::string key = t.name;
    if (key.starts_with(kPrefix)) key = key.substr(kPrefix.size());
    if (key.find("lora_embedding_") != std::string::npos)
      throw unsupported_error(where + ": tensor '" + t.name + "': embedding LoRA is not supported");
    if (key.find("lora_magnitude_vector") != std::string::npos)
      throw unsupported_error(where + ": tensor '" + t.name + "': DoRA is not supported");
    if (key.ends_with(".lora_B.bias"))
      throw unsupported_error(where + ": tensor '" + t.name + "': LoRA bias is not supported");
    const bool is_a = key.ends_with(kSuffixA), is_b = key.ends_with(kSuffixB);
    if (!is_a && !is_b) {
      if (is_saved_module(key, config_.modules_to_save)) {
        saved_.push_back(t.name);
        continue;
      }
      throw format_error(where + ": tensor '" + t.name + "' is not a LoRA factor (expected "
                         "'<module>.lora_A.weight' or '<module>.lora_B.weight')");
    }
    if (t.shape.size() != 2)
      throw unsupported_error(where + ": tensor '" + t.name + "' has " +
                              std::to_string(t.shape.size()) +
                              " dimensions; only LoRA on linear layers (2-D factors) is supported");
    if (!is_float_dtype(t.dtype))
      throw unsupported_error(where + ": tensor '" + t.name + "' has dtype " +
                              std::string(dtype_name(t.dtype)) + "; expected a float type");
    const auto path = key.substr(0, key.size() - kSuffixA.size());
    auto& m = by_path[path];
    m.path = path;
    (is_a ? m.key_a : m.key_b) = t.name;
  }

  for (auto& [path, m] : by_path) {
    if (m.key_a.empty() || m.key_b.empty())
      throw format_error(where + ": module '" + path + "' has " +
                         (m.key_a.empty() ? "lora_B but no lora_A" : "lora_A but no lora_B"));
    const auto& a = weights_->at(m.key_a);
    const auto& b = weights_->at(m.key_b);
    if (a.shape[0] != b.shape[1])
      throw shape_error(where + ": module '" + path + "': lora_A is " +
                        std::to_string(a.shape[0]) + "×" + std::to_string(a.shape[1]) +
                        " but lora_B is " + std::to_string(b.shape[0]) + "×" +
                        std::to_string(b.shape[1]) + " (ranks differ)");
    m.rank = a.shape[0];
    m.in = a.shape[1];
    m.out = b.shape[0];
    if (m.rank != config_.rank_for(path))
      throw shape_error(where + ": module '" + path + "' has rank " + std::to_string(m.rank) +
                        " but " + kAdapterConfigName + " gives r = " +
                        std::to_string(config_.rank_for(path)) + " for it");
    if (!config_.targets(path))
      throw format_error(where + ": module '" + path + "' is not selected by target_modules in " +
                         kAdapterConfigName + " (PEFT would not load it)");
    m.scale = config_.scale_for(path);
    std::tie(m.layer, m.name) = split_module_path(path);
    modules_.push_back(std::move(m));
  }
  std::sort(modules_.begin(), modules_.end(), [](const LoraModule& x, const LoraModule& y) {
    return x.layer != y.layer ? x.layer < y.layer : x.name < y.name;
  });
}

const LoraModule* PeftAdapter::find(const std::string& path) const noexcept {
  for (const auto& m : modules_)
    if (m.path == path) return &m;
  return nullptr;
}

std::vector<float> PeftAdapter::read_a(const LoraModule& m) const { return weights_->read_f32(m.key_a); }
std::vector<float> PeftAdapter::read_b(const LoraModule& m) const { return weights_->read_f32(m.key_b); }

struct PeftAdapterWriter::Impl {
  std::optional<StagedDir> staged;  // none where the weights file is another writer's
  nlohmann::ordered_json config;
  std::optional<SafetensorsWriter> weights;
  std::vector<std::pair<std::string, std::string>> extra_files;
};

PeftAdapterWriter::PeftAdapterWriter(Join, const fs::path& dir, const std::vector<LoraModuleShape>& modules,
                                     const AdapterWriteOptions& options, const fs::path& joining) {
  if (modules.empty()) throw usage_error(dir.string() + ": an adapter needs at least one module");
  std::map<std::int64_t, int> rank_count;
  std::vector<std::string> targets;
  for (const auto& m : modules) {
    ++rank_count[m.rank];
    const auto leaf = m.path.substr(m.path.rfind('.') + 1);
    if (std::find(targets.begin(), targets.end(), leaf) == targets.end()) targets.push_back(leaf);
  }
  std::sort(targets.begin(), targets.end());
  const auto r = std::max_element(rank_count.begin(), rank_count.end(), [](auto& x, auto& y) {
                   return x.second < y.second;
                 })->first;

  nlohmann::ordered_json rank_pattern = nlohmann::ordered_json::object();
  nlohmann::ordered_json alpha_pattern = nlohmann::ordered_json::object();
  for (const auto& m : modules)
    if (m.rank != r) {
      // The full path, as PEFT documents: it matches only this module.
      rank_pattern[m.path] = m.rank;
      alpha_pattern[m.path] = m.rank;
    }

  nlohmann::ordered_json config;
  config["peft_type"] = "LORA";
  config["task_type"] = options.task_type.empty() ? nlohmann::ordered_json(nullptr)
                                                  : nlohmann::ordered_json(options.task_type);
  config["base_model_name_or_path"] = options.base_model_name_or_path;
  config["r"] = r;
  config["lora_alpha"] = r;  // factors carry their scale: PEFT's alpha / r is 1
  config["lora_dropout"] = 0.0;
  config["bias"] = "none";
  config["use_rslora"] = false;
  config["use_dora"] = false;
  config["fan_in_fan_out"] = options.fan_in_fan_out;
  config["target_modules"] = targets;
  config["rank_pattern"] = rank_pattern;
  config["alpha_pattern"] = alpha_pattern;
  config["modules_to_save"] = options.modules_to_save.empty()
                                  ? nlohmann::ordered_json(nullptr)
                                  : nlohmann::ordered_json(options.modules_to_save);
  config["init_lora_weights"] = true;
  config["inference_mode"] = true;

  std::vector<TensorSpec> specs;
  for (const auto& m : modules) {
    specs.push_back({std::string(kPrefix) + m.path + std::string(kSuffixA), options.dtype, {m.rank, m.in}});
    specs.push_back({std::string(kPrefix) + m.path + std::string(kSuffixB), options.dtype, {m.out, m.rank}});
  }
  // PEFT saves a kept module's tensors under the base's names (its wrapper's own
  // "modules_to_save.<adapter>." part left out), after the same prefix.
  for (const auto& t : options.whole_tensors)
    specs.push_back({std::string(kPrefix) + t.name, t.dtype, t.shape});
  auto metadata = options.metadata;
  metadata.emplace("format", "pt");
  impl_ = std::make_unique<Impl>();
  impl_->config = std::move(config);
  impl_->extra_files = options.extra_files;
  if (joining.empty()) {
    impl_->staged.emplace(dir, options.overwrite);
    impl_->weights.emplace(impl_->staged->path() / kAdapterWeightsName, std::move(specs), std::move(metadata));
  } else {
    impl_->weights.emplace(SafetensorsWriter::Join{}, joining, dir / kAdapterWeightsName, std::move(specs),
                           std::move(metadata));
  }
}

PeftAdapterWriter::PeftAdapterWriter(const fs::path& dir, const std::vector<LoraModuleShape>& modules,
                                     const AdapterWriteOptions& options)
    : PeftAdapterWriter(Join{}, dir, modules, options, {}) {}

const fs::path& PeftAdapterWriter::writing_path() const noexcept { return impl_->weights->writing_path(); }
std::vector<std::string> PeftAdapterWriter::written_names() const { return impl_->weights->written_names(); }
void PeftAdapterWriter::written_elsewhere(const std::string& name) { impl_->weights->written_elsewhere(name); }

PeftAdapterWriter::~PeftAdapterWriter() = default;
PeftAdapterWriter::PeftAdapterWriter(PeftAdapterWriter&&) noexcept = default;
PeftAdapterWriter& PeftAdapterWriter::operator=(PeftAdapterWriter&&) noexcept = default;

void PeftAdapterWriter::write(const std::string& path, std::span<const float> a,
                              std::span<const float> b) {
  impl_->weights->write_f32(std::string(kPrefix) + path + std::string(kSuffixA), a);
  impl_->weights->write_f32(std::string(kPrefix) + path + std::string(kSuffixB), b);
}

void PeftAdapterWriter::write_whole(const std::string& tensor, std::uint64_t offset,
                                    std::span<const std::byte> bytes) {
  impl_->weights->write_part(std::string(kPrefix) + tensor, offset, bytes);
}

void PeftAdapterWriter::commit() {
  impl_->weights->commit();
  if (!impl_->staged) return;  // joined: this writer's weights synced, the rest is the creator's
  write_file_atomic(impl_->staged->path() / kAdapterConfigName, impl_->config.dump(2) + "\n", false);
  for (const auto& [name, text] : impl_->extra_files)
    write_file_atomic(impl_->staged->path() / name, text, false);
  impl_->staged->commit();
}

void write_peft_adapter(const fs::path& dir, const std::vector<LoraModuleData>& modules,
                        const AdapterWriteOptions& options,
                        const std::function<void(PeftAdapterWriter&)>& write_whole) {
  std::vector<LoraModuleShape> shapes;
  for (const auto& m : modules) {
    if (m.a.size() != static_cast<std::size_t>(m.rank * m.in) ||
        m.b.size() != static_cast<std::size_t>(m.out * m.rank))
      throw shape_error(dir.string() + ": module '" + m.path + "' factor sizes do not match " +
                        "rank " + std::to_string(m.rank) + ", in " + std::to_string(m.in) +
                        ", out " + std::to_string(m.out));
    shapes.push_back({m.path, m.rank, m.in, m.out});
  }
  PeftAdapterWriter w(dir, shapes, options);
  if (write_whole) write_whole(w);
  for (const auto& m : modules) w.write(m.path, m.a, m.b);
  w.commit();
}

}  // namespace revmerge
