// `revmerge info PATH`: what a safetensors file, checkpoint, adapter or model folder holds.
#include <fmt/format.h>
#include <fmt/ostream.h>

#include <filesystem>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "bundle_report.hpp"
#include "commands.hpp"
#include "revmerge/checkpoint.hpp"
#include "revmerge/error.hpp"
#include "revmerge/hf_model.hpp"
#include "revmerge/peft.hpp"
#include "text_format.hpp"
#include "command_line.hpp"

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace revmerge::cli {
namespace {

ojson tensor_json(const TensorInfo& t) {
  return {{"name", t.name},
          {"dtype", dtype_name(t.dtype)},
          {"shape", t.shape},
          {"bytes", t.nbytes()}};
}

std::string dtype_summary(const std::vector<CheckpointTensor>& tensors) {
  std::map<std::string_view, std::size_t> counts;
  for (const auto& t : tensors) ++counts[dtype_name(t.info->dtype)];
  std::string out;
  for (const auto& [name, n] : counts) out += fmt::format("{}{} {}", out.empty() ? "" : ", ", n, name);
  return out;
}

ojson checkpoint_json(const Checkpoint& c, bool with_tensors) {
  ojson j;
  j["files"] = ojson::array();
  for (const auto& f : c.files()) j["files"].push_back(f->path().string());
  if (!c.index_path().empty()) j["index"] = c.index_path().string();
  j["tensor_count"] = c.tensors().size();
  j["tensor_bytes"] = c.total_bytes();
  if (with_tensors) {
    j["tensors"] = ojson::array();
    for (const auto& t : c.tensors()) j["tensors"].push_back(tensor_json(*t.info));
  }
  return j;
}

void print_checkpoint(const Checkpoint& c, bool list_tensors) {
  fmt::print(report_out(), "  files: {}{}\n", c.files().size(),
             c.index_path().empty() ? "" : fmt::format(" (index {})", c.index_path().filename().string()));
  fmt::print(report_out(), "  tensors: {} ({}), {}\n", c.tensors().size(), dtype_summary(c.tensors()),
             human_bytes(c.total_bytes()));
  if (!list_tensors) return;
  for (const auto& t : c.tensors())
    fmt::print(report_out(), "    {:<56} {:<5} {:<18} {}\n", t.info->name, dtype_name(t.info->dtype),
               shape_string(t.info->shape), human_bytes(t.info->nbytes()));
}

void info_adapter(const fs::path& dir, bool as_json) {
  const PeftAdapter a(dir);
  const auto& c = a.config();
  if (as_json) {
    ojson j;
    j["kind"] = "peft_lora_adapter";
    j["path"] = dir.string();
    j["config"] = {{"r", c.r},
                   {"lora_alpha", c.lora_alpha},
                   {"use_rslora", c.use_rslora},
                   {"fan_in_fan_out", c.fan_in_fan_out},
                   {"base_model_name_or_path", c.base_model_name_or_path},
                   {"rank_pattern", c.rank_pattern},
                   {"alpha_pattern", c.alpha_pattern},
                   {"modules_to_save", c.modules_to_save}};
    if (c.target_regex)
      j["config"]["target_modules"] = *c.target_regex;
    else
      j["config"]["target_modules"] = c.target_modules;
    j["modules"] = ojson::array();
    for (const auto& m : a.modules()) {
      const auto& ta = a.weights().at(m.key_a);
      j["modules"].push_back({{"path", m.path}, {"layer", m.layer}, {"name", m.name},
                              {"rank", m.rank}, {"in", m.in}, {"out", m.out},
                              {"scale", m.scale}, {"dtype", dtype_name(ta.dtype)}});
    }
    j["modules_to_save_tensors"] = a.saved_module_tensors();
    j["file_bytes"] = a.weights().file_size();
    report_out() << j.dump(2) << "\n";
    return;
  }
  fmt::print(report_out(), "PEFT LoRA adapter: {}\n", dir.string());
  fmt::print(report_out(), "  base model: {}\n", c.base_model_name_or_path.empty() ? "(not recorded)"
                                                                      : c.base_model_name_or_path);
  fmt::print(report_out(), "  r: {}   lora_alpha: {}   rslora: {}   fan_in_fan_out: {}\n", c.r, c.lora_alpha,
             c.use_rslora ? "yes" : "no", c.fan_in_fan_out ? "yes" : "no");
  fmt::print(report_out(), "  target_modules: {}\n",
             c.target_regex ? *c.target_regex : fmt::format("{}", fmt::join(c.target_modules, ", ")));
  std::set<int> layers;
  for (const auto& m : a.modules()) layers.insert(m.layer);
  fmt::print(report_out(), "  modules: {} in {} layer(s); {} in {}\n", a.modules().size(), layers.size(),
             human_bytes(a.weights().file_size()), kAdapterWeightsName);
  if (!a.saved_module_tensors().empty())
    fmt::print(report_out(), "  modules_to_save tensors: {}\n", a.saved_module_tensors().size());
  fmt::print(report_out(), "  {:>5}  {:<28} {:>5} {:>14} {:>10}  {}\n", "layer", "module", "rank", "out × in",
             "scale", "dtype");
  for (const auto& m : a.modules())
    fmt::print(report_out(), "  {:>5}  {:<28} {:>5} {:>14} {:>10.6g}  {}\n", m.layer, m.name, m.rank,
               fmt::format("{} × {}", m.out, m.in), m.scale,
               dtype_name(a.weights().at(m.key_a).dtype));
}

void info_model(const fs::path& dir, bool as_json, bool list_tensors) {
  const HfModel m(dir);
  const auto& c = m.config();
  // Group the linear weights by module name: one line per kind of layer.
  std::map<std::string, std::pair<const LinearWeight*, int>> kinds;
  for (const auto& w : m.linears()) {
    auto& k = kinds[w.name];
    if (!k.first) k.first = &w;
    ++k.second;
  }
  if (as_json) {
    ojson j;
    j["kind"] = "hf_model";
    j["path"] = dir.string();
    j["config"] = {{"model_type", c.model_type}, {"architectures", c.architectures},
                   {"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
                   {"num_hidden_layers", c.num_hidden_layers},
                   {"num_attention_heads", c.num_attention_heads},
                   {"num_key_value_heads", c.num_key_value_heads},
                   {"vocab_size", c.vocab_size}, {"torch_dtype", c.torch_dtype}};
    j["weights_stored_in_by_out"] = m.stores_weights_transposed();
    j["checkpoint"] = checkpoint_json(m.checkpoint(), list_tensors);
    j["linear_modules"] = ojson::array();
    for (const auto& [name, k] : kinds)
      j["linear_modules"].push_back({{"name", name}, {"layers", k.second},
                                     {"out", k.first->out}, {"in", k.first->in},
                                     {"dtype", dtype_name(k.first->dtype)}});
    report_out() << j.dump(2) << "\n";
    return;
  }
  fmt::print(report_out(), "Hugging Face model: {}\n", dir.string());
  fmt::print(report_out(), "  model_type: {}   architectures: {}   dtype: {}\n", c.model_type,
             fmt::join(c.architectures, ", "), c.torch_dtype);
  fmt::print(report_out(), "  layers: {}   hidden: {}   intermediate: {}   heads: {} (kv {})   vocab: {}\n",
             c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
             c.num_key_value_heads, c.vocab_size);
  print_checkpoint(m.checkpoint(), list_tensors);
  fmt::print(report_out(), "  linear modules in blocks (out × in{}):\n",
             m.stores_weights_transposed() ? "; stored in × out, transformers' Conv1D: adapters say fan_in_fan_out" : "");
  for (const auto& [name, k] : kinds)
    fmt::print(report_out(), "    {:<28} × {:>3} layers  {:>6} × {:<6} {}\n", name, k.second, k.first->out,
               k.first->in, dtype_name(k.first->dtype));
}

void info_checkpoint(const fs::path& path, bool as_json, bool list_tensors) {
  const Checkpoint c(path);
  if (as_json) {
    ojson j;
    j["kind"] = c.index_path().empty() ? "safetensors" : "sharded_safetensors";
    j["path"] = path.string();
    auto body = checkpoint_json(c, true);
    j.update(body);
    if (c.files().size() == 1 && !c.files()[0]->metadata().empty())
      j["metadata"] = c.files()[0]->metadata();
    report_out() << j.dump(2) << "\n";
    return;
  }
  fmt::print(report_out(), "{}: {}\n", c.index_path().empty() ? "safetensors file" : "sharded safetensors",
             path.string());
  if (c.files().size() == 1)
    for (const auto& [k, v] : c.files()[0]->metadata()) fmt::print(report_out(), "  metadata {} = {}\n", k, v);
  print_checkpoint(c, list_tensors || c.tensors().size() <= 64);
}

void run_info(const fs::path& path, bool as_json, bool list_tensors) {
  if (!fs::exists(path)) throw io_error(path.string() + ": no such file or folder");
  if (fs::is_directory(path)) {
    if (fs::exists(path / kAdapterConfigName)) return info_adapter(path, as_json);
    if (fs::exists(path / kBundleManifestName)) {
      const Bundle b(path);
      if (as_json) {
        report_out() << bundle_report_json(b.manifest(), path.string()).dump(1) << "\n";
        return;
      }
      return print_bundle_report(b.manifest(), path.string(), 5);
    }
    if (fs::exists(path / "config.json")) return info_model(path, as_json, list_tensors);
    if (fs::exists(path / kShardIndexName) || fs::exists(path / "model.safetensors"))
      return info_checkpoint(path, as_json, list_tensors);
    throw format_error(path.string() + ": not a PEFT adapter (" + kAdapterConfigName +
                       "), a model (config.json), an RMM bundle (" + kBundleManifestName +
                       ") or a safetensors checkpoint");
  }
  if (path.extension() == ".safetensors" || path.string().ends_with(".index.json"))
    return info_checkpoint(path, as_json, list_tensors);
  throw format_error(path.string() +
                     ": unknown kind of file (expected .safetensors or .index.json, or a folder)");
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "info", "Describe a safetensors file, sharded checkpoint, PEFT adapter, model folder or RMM bundle");
  static fs::path path;
  static bool as_json = false, list_tensors = false;
  path.clear(), as_json = false, list_tensors = false;  // each command line starts from the defaults
  cmd->add_option("PATH", path, "file or folder to describe")->required();
  cmd->add_flag("--json", as_json, "print JSON instead of text");
  cmd->add_flag("--tensors", list_tensors, "list every tensor (models and large files)");
  cmd->callback([] { run_info(path, as_json, list_tensors); });
}

}  // namespace revmerge::cli
