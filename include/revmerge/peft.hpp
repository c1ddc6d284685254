#pragma once
/// \file
/// PEFT LoRA adapter folders: `adapter_config.json` + `adapter_model.safetensors`.
///
/// Keys look like `base_model.model.<module path>.lora_A.weight` (A: r × in) and `...lora_B.weight`
/// (B: out × r); the module's delta is ΔW = scale · B A with scale = alpha / r, or alpha / √r
/// with rslora, where `rank_pattern` / `alpha_pattern` override r and alpha per module.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "revmerge/safetensors.hpp"

namespace revmerge {

inline constexpr const char* kAdapterConfigName = "adapter_config.json";
inline constexpr const char* kAdapterWeightsName = "adapter_model.safetensors";

struct LoraPatterns;  // the config's patterns, compiled (host/formats/peft_config.cpp)

/// The fields of adapter_config.json revmerge reads.
struct LoraConfig {
  int r = 8;
  double lora_alpha = 8;
  bool use_rslora = false;
  std::vector<std::string> target_modules;   ///< list form (empty when a regex is given)
  std::optional<std::string> target_regex;   ///< string form: a regex over module paths
  std::map<std::string, int> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  bool fan_in_fan_out = false;
  std::vector<std::string> modules_to_save;
  std::string base_model_name_or_path;
  std::string task_type;
  /// target_regex, rank_pattern and alpha_pattern compiled once by parse_lora_config, the
  /// pattern keys in the file's order (PEFT takes the first that matches). A config built by
  /// hand leaves it empty; its patterns are then compiled per call, keys in sorted order.
  std::shared_ptr<const LoraPatterns> patterns;

  /// Rank / alpha / scale for a module path (e.g. "model.layers.0.self_attn.q_proj"), with the
  /// patterns applied as PEFT applies them: a pattern key matches a path that equals it or
  /// ends with "." + key (keys are regular expressions).
  int rank_for(const std::string& module_path) const;
  double alpha_for(const std::string& module_path) const;
  double scale_for(const std::string& module_path) const;
  /// Whether target_modules selects this module path.
  bool targets(const std::string& module_path) const;
};

/// Parses the JSON of an adapter_config.json; rejects non-LoRA types, DoRA, LoRA bias and
/// other unsupported options with unsupported_error, malformed fields with format_error.
/// `file` names the source in messages.
LoraConfig parse_lora_config(const std::string& json_text, const std::string& file);

/// One adapted linear module.
struct LoraModule {
  std::string path;     ///< module path inside the model: "model.layers.3.self_attn.q_proj"
  int layer = -1;       ///< the first integer component of the path (the block index), or -1
  std::string name;     ///< the path after the block index ("self_attn.q_proj"), or the path
  std::string key_a;    ///< tensor names in adapter_model.safetensors
  std::string key_b;
  std::int64_t rank = 0, in = 0, out = 0;
  double scale = 1.0;   ///< alpha / r (or alpha / √r with rslora)
};

/// Splits a module path into (block index, name after it); -1 and the whole path when it holds
/// no integer component.
std::pair<int, std::string> split_module_path(const std::string& path);

/// A loaded, validated adapter folder (tensors stay memory-mapped).
class PeftAdapter {
 public:
  /// Opens `dir`; checks every module has A and B with matching ranks, the rank the config
  /// gives, float dtypes and targeted names. Throws format_error / unsupported_error naming the
  /// folder, the tensor and the problem.
  explicit PeftAdapter(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const noexcept { return dir_; }
  const LoraConfig& config() const noexcept { return config_; }
  /// Modules sorted by (layer, name).
  const std::vector<LoraModule>& modules() const noexcept { return modules_; }
  const LoraModule* find(const std::string& path) const noexcept;
  const SafetensorsFile& weights() const noexcept { return *weights_; }
  /// Tensors stored for modules_to_save (full weights, not LoRA factors).
  const std::vector<std::string>& saved_module_tensors() const noexcept { return saved_; }

  /// Factors as f32, row-major: A is rank × in, B is out × rank (unscaled).
  std::vector<float> read_a(const LoraModule& m) const;
  std::vector<float> read_b(const LoraModule& m) const;

 private:
  std::filesystem::path dir_;
  LoraConfig config_;
  std::unique_ptr<SafetensorsFile> weights_;
  std::vector<LoraModule> modules_;
  std::vector<std::string> saved_;
};

/// What to write for one module of an adapter: factors already scaled (written with
/// lora_alpha = r, so PEFT's scale is 1).
struct LoraModuleData {
  std::string path;
  std::int64_t rank = 0, in = 0, out = 0;
  std::vector<float> a;  ///< rank × in
  std::vector<float> b;  ///< out × rank
};

/// Options of an adapter written by revmerge.
struct AdapterWriteOptions {
  std::string base_model_name_or_path;
  std::string task_type;  ///< e.g. "CAUSAL_LM"; empty writes null
  DType dtype = DType::F32;
  bool overwrite = false;
  /// PEFT's flag for a base whose weights are stored in × out (GPT-2's Conv1D); the factors are
  /// stored as for any other module.
  bool fan_in_fan_out = false;
  std::map<std::string, std::string> metadata;  ///< extra safetensors __metadata__
  /// Small files written into the folder beside the adapter: (name, text), e.g. the recipe.
  std::vector<std::pair<std::string, std::string>> extra_files;
  /// Modules kept whole, PEFT's `modules_to_save` (full paths, e.g. "model.norm"), and their
  /// tensors as the model names them ("model.norm.weight"), each written with
  /// PeftAdapterWriter::write_whole; PEFT loads them in place of the base's.
  std::vector<std::string> modules_to_save;
  std::vector<TensorSpec> whole_tensors;
};

/// One module's place in an adapter being written: its path, rank and base shape.
struct LoraModuleShape {
  std::string path;
  std::int64_t rank = 0, in = 0, out = 0;
};

/// Writes a PEFT adapter folder module by module (for adapters too large to hold): every module
/// is declared up front, written once each in any order, and the folder appears on commit()
/// (staged beside `dir`; nothing is left behind when the writer is destroyed uncommitted).
class PeftAdapterWriter {
 public:
  PeftAdapterWriter(const std::filesystem::path& dir, const std::vector<LoraModuleShape>& modules,
                    const AdapterWriteOptions& options);
  ~PeftAdapterWriter();
  PeftAdapterWriter(PeftAdapterWriter&&) noexcept;
  PeftAdapterWriter& operator=(PeftAdapterWriter&&) noexcept;

  /// Joins the weights file another writer with the same arguments is writing under
  /// `writing` (its writing_path(), in another process), to write some of the modules; commit()
  /// then syncs them, and the creator writes the config and renames the folder.
  struct Join {};
  PeftAdapterWriter(Join, const std::filesystem::path& dir, const std::vector<LoraModuleShape>& modules,
                    const AdapterWriteOptions& options, const std::filesystem::path& writing);

  /// A (rank × in) and B (out × rank) of the module at `path`, already scaled.
  void write(const std::string& path, std::span<const float> a, std::span<const float> b);
  /// Bytes [offset, offset + size) of a tensor kept whole (AdapterWriteOptions::whole_tensors,
  /// by the model's name), in its declared dtype.
  void write_whole(const std::string& tensor, std::uint64_t offset, std::span<const std::byte> bytes);
  void commit();
  /// The weights file's name while it is written; the tensors written here; a tensor counted
  /// as written by another writer of the same file.
  const std::filesystem::path& writing_path() const noexcept;
  std::vector<std::string> written_names() const;
  void written_elsewhere(const std::string& name);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Writes a PEFT adapter folder atomically (staged beside `dir`, renamed when complete). The
/// most common rank becomes `r`; modules of another rank go to rank_pattern (with a matching
/// alpha_pattern), so every module's scale is exactly 1. `write_whole`, when given, writes the
/// tensors `options.whole_tensors` declares (PeftAdapterWriter::write_whole) before the commit.
void write_peft_adapter(const std::filesystem::path& dir, const std::vector<LoraModuleData>& modules,
                        const AdapterWriteOptions& options,
                        const std::function<void(PeftAdapterWriter&)>& write_whole = {});

}  // namespace revmerge
