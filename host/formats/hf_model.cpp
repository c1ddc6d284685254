#include "revmerge/hf_model.hpp"

#include <algorithm>

#include "core/json_file.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"

namespace fs = std::filesystem;

namespace revmerge {
namespace {

fs::path require_config(const fs::path& dir) {
  if (!fs::is_directory(dir)) throw io_error(dir.string() + ": not a folder");
  if (!fs::exists(dir / "config.json"))
    throw io_error(dir.string() + ": no config.json (not a Hugging Face model folder)");
  return dir;
}

HfModelConfig parse_config(const fs::path& path) {
  const auto j = read_json_file(path);
  if (!j.is_object()) throw format_error(path.string() + ": not a JSON object");
  HfModelConfig c;
  auto str = [&](const char* k, std::string& out) {
    if (auto it = j.find(k); it != j.end() && it->is_string()) out = it->get<std::string>();
  };
  auto num = [&](const char* k, std::int64_t& out) {
    if (auto it = j.find(k); it != j.end() && it->is_number_integer()) out = it->get<std::int64_t>();
  };
  str("model_type", c.model_type);
  str("torch_dtype", c.torch_dtype);
  if (c.torch_dtype.empty()) str("dtype", c.torch_dtype);
  if (auto it = j.find("architectures"); it != j.end() && it->is_array())
    for (const auto& a : *it)
      if (a.is_string()) c.architectures.push_back(a.get<std::string>());
  num("hidden_size", c.hidden_size);
  num("intermediate_size", c.intermediate_size);
  num("num_hidden_layers", c.num_hidden_layers);
  num("num_attention_heads", c.num_attention_heads);
  num("num_key_value_heads", c.num_key_value_heads);
  num("vocab_size", c.vocab_size);
  // GPT-2's family names them otherwise (transformers maps these to the names above).
  if (c.hidden_size == 0) num("n_embd", c.hidden_size);
  if (c.num_hidden_layers == 0) num("n_layer", c.num_hidden_layers);
  if (c.num_attention_heads == 0) num("n_head", c.num_attention_heads);
  if (c.intermediate_size == 0) num("n_inner", c.intermediate_size);
  return c;
}

}  // namespace

bool HfModel::stores_weights_transposed() const {
  static const char* const conv1d[] = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp",
                                       "clvp_decoder", "clvp_encoder"};
  return std::find(std::begin(conv1d), std::end(conv1d), config_.model_type) != std::end(conv1d);
}

HfModel::HfModel(const fs::path& dir)
    : dir_(require_config(dir)), config_(parse_config(dir / "config.json")), checkpoint_(dir) {
  const bool transposed = stores_weights_transposed();
  for (const auto& t : checkpoint_.tensors()) {
    const auto& name = t.info->name;
    if (t.info->shape.size() != 2 || !name.ends_with(".weight")) continue;
    LinearWeight w;
    w.tensor = name;
    w.path = name.substr(0, name.size() - 7);
    std::tie(w.layer, w.name) = split_module_path(w.path);
    if (w.layer < 0) continue;  // embeddings, lm_head: not inside a block
    w.out = t.info->shape[transposed ? 1 : 0];
    w.in = t.info->shape[transposed ? 0 : 1];
    w.dtype = t.info->dtype;
    w.stored_in_by_out = transposed;
    linears_.push_back(std::move(w));
  }
  std::sort(linears_.begin(), linears_.end(), [](const LinearWeight& a, const LinearWeight& b) {
    return a.layer != b.layer ? a.layer < b.layer : a.name < b.name;
  });
}

}  // namespace revmerge
