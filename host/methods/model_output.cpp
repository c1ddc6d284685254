#include "methods/model_output.hpp"

#include <nlohmann/json.hpp>
#include <optional>

#include "core/atomic_output.hpp"
#include "distributed/agreement.hpp"
#include "distributed/shared_output.hpp"
#include "core/interrupt.hpp"
#include "core/json_file.hpp"
#include "revmerge/checkpoint.hpp"
#include "revmerge/error.hpp"

namespace fs = std::filesystem;

namespace revmerge {
namespace {

// The base's config.json with the dtype the weights are written in (transformers loads a model
// in its config's dtype, so a bf16 model whose config says float32 takes twice the memory; both
// spellings are set where present: "dtype" since transformers 4.56, "torch_dtype" before), and
// for stacked layers their count and per-layer entries.
std::string edited_config(const fs::path& config, const ModelOutputOptions& o) {
  auto j = nlohmann::ordered_json::parse(read_text_file(config), nullptr, false);
  if (!j.is_object())
    throw format_error(config.string() + ": not a JSON object; cannot record the dtype written");
  if (o.dtype) {
    const auto dtype = *o.dtype;
    const char* name = dtype == DType::BF16 ? "bfloat16" : dtype == DType::F16 ? "float16" : "float32";
    bool set = false;
    for (const char* key : {"dtype", "torch_dtype"})
      if (j.contains(key)) j[key] = name, set = true;
    if (!set) j["torch_dtype"] = name;
  }
  if (o.num_hidden_layers) {
    j["num_hidden_layers"] = *o.num_hidden_layers;
    if (j.contains("layer_types") && j["layer_types"].is_array()) {
      const auto old = j["layer_types"];
      auto types = nlohmann::ordered_json::array();
      for (const auto l : o.layer_sources) {
        if (l < 0 || l >= static_cast<std::int64_t>(old.size()))
          throw format_error(config.string() + ": 'layer_types' has no entry for layer " + std::to_string(l));
        types.push_back(old[static_cast<std::size_t>(l)]);
      }
      j["layer_types"] = types;
    }
  }
  return j.dump(2) + "\n";
}

bool is_tokenizer_file(const std::string& name) {
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                        "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt",
                        "added_tokens.json", "chat_template.jinja", "spiece.model"})
    if (name == f) return true;
  return false;
}

// The vocabulary a folder's tokenizer.json maps tokens to (null without one).
nlohmann::json vocabulary(const fs::path& dir) {
  const auto path = dir / "tokenizer.json";
  if (!fs::exists(path)) return nullptr;
  const auto j = nlohmann::json::parse(read_text_file(path), nullptr, false);
  if (j.is_discarded()) throw format_error(path.string() + ": not valid JSON");
  const auto model = j.find("model");
  if (model == j.end() || !model->is_object() || !model->contains("vocab")) return nullptr;
  return (*model)["vocab"];
}

}  // namespace

std::string model_chat_template(const fs::path& dir) {
  if (fs::exists(dir / "chat_template.jinja")) return read_text_file(dir / "chat_template.jinja");
  if (!fs::exists(dir / "tokenizer_config.json")) return {};
  const auto j = nlohmann::json::parse(read_text_file(dir / "tokenizer_config.json"), nullptr, false);
  if (j.is_object() && j.contains("chat_template") && j["chat_template"].is_string())
    return j["chat_template"].get<std::string>();
  return {};
}

std::vector<OutputTensor> full_model_tensors(const HfModel& base, const ModelOutputOptions& o) {
  std::vector<OutputTensor> tensors;
  for (const auto& t : base.checkpoint().tensors()) {
    auto dtype = t.info->dtype;
    if (o.dtype && is_float_dtype(dtype)) dtype = *o.dtype;
    tensors.push_back({t.info->name, dtype, t.info->shape, &t});
  }
  return tensors;
}

std::int64_t write_full_model(const HfModel& base, const fs::path& out,
                              const TensorProducer& produce, const ModelOutputOptions& o) {
  return write_model(base, full_model_tensors(base, o), out, produce, o);
}

std::int64_t write_full_model(const HfModel& base, const fs::path& out,
                              const PieceProducer& produce, const ModelOutputOptions& o) {
  return write_model(base, full_model_tensors(base, o), out, produce, o);
}

std::int64_t write_model(const HfModel& config_from, const std::vector<OutputTensor>& tensors,
                         const fs::path& out, const TensorProducer& produce, const ModelOutputOptions& o) {
  std::vector<float> values;  // reused from tensor to tensor: no fresh pages
  const PieceProducer whole = [&](const std::string& name, std::uint64_t numel, const PieceSink& sink) {
    values.resize(numel);
    if (!produce(name, values)) return false;
    sink(0, values);
    return true;
  };
  return write_model(config_from, tensors, out, whole, o);
}

namespace {

// An input tensor copied into the output in parts of about `piece_bytes`, each part's pages
// dropped from the resident set once written (the bytes as they are, or converted to `dtype`).
void copy_tensor(ShardedWriter& writer, const OutputTensor& t, const ModelOutputOptions& o,
                 std::vector<float>& values) {
  const auto& file = *t.source->file;
  const auto& info = *t.source->info;
  const auto numel = info.numel();
  const bool convert = is_float_dtype(t.dtype) && t.dtype != info.dtype;
  const std::uint64_t per = std::max<std::uint64_t>(
      1, o.piece_bytes / (convert ? sizeof(float) + dtype_size(t.dtype) : dtype_size(info.dtype)));
  const auto bytes = file.bytes(info);
  if (numel == 0) return writer.write(t.name, bytes);
  for (std::uint64_t first = 0; first < numel; first += per) {
    const auto count = std::min(per, numel - first);
    if (convert) {
      values.resize(count);
      file.read_part(info, first, values, o.threads);
      writer.write_f32_part(t.name, first, values, o.threads);
    } else {
      const auto size = dtype_size(info.dtype);
      writer.write_part(t.name, first * size, bytes.subspan(first * size, count * size));
      file.check_intact();
    }
    file.evict_part(info, first, count);
  }
}

}  // namespace

namespace {

// The staged folder's small files: config.json and what travels with it (not the weights, not
// the index), the tokenizer's from tokenizer_from, the chat template, the extra files.
void write_model_files(const HfModel& config_from, const fs::path& folder, const ModelOutputOptions& o) {
  for (const auto& entry : fs::directory_iterator(config_from.dir())) {
    const auto name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.ends_with(".safetensors") || name == kShardIndexName ||
        name.ends_with(".bin") || name.ends_with(".pt"))
      continue;
    if (!o.tokenizer_from.empty() && is_tokenizer_file(name)) continue;  // from there instead
    if (name == "config.json" && (o.dtype || o.num_hidden_layers))
      write_file_atomic(folder / name, edited_config(entry.path(), o), false);
    else if (name.ends_with(".json") || name.ends_with(".txt") || name.ends_with(".model") ||
             name.ends_with(".jinja"))
      write_file_atomic(folder / name, read_text_file(entry.path()), false);
  }
  if (!o.tokenizer_from.empty()) {
    if (!fs::is_directory(o.tokenizer_from))
      throw io_error(o.tokenizer_from.string() + ": no such folder (tokenizer_source)");
    if (vocabulary(o.tokenizer_from) != vocabulary(config_from.dir()))
      throw format_error(o.tokenizer_from.string() + ": its tokenizer's vocabulary is not " +
                         config_from.dir().string() + "'s; revmerge copies a tokenizer but does "
                         "not remap embeddings to another vocabulary (tokenizer_source)");
    bool any = false;
    for (const auto& entry : fs::directory_iterator(o.tokenizer_from)) {
      const auto name = entry.path().filename().string();
      if (!entry.is_regular_file() || !is_tokenizer_file(name)) continue;
      write_file_atomic(folder / name, read_text_file(entry.path()), true);
      any = true;
    }
    if (!any) throw io_error(o.tokenizer_from.string() + ": holds no tokenizer files (tokenizer_source)");
  }
  if (o.chat_template) {
    write_file_atomic(folder / "chat_template.jinja", *o.chat_template, true);
    const auto tc = folder / "tokenizer_config.json";
    if (fs::exists(tc)) {
      auto j = nlohmann::ordered_json::parse(read_text_file(tc), nullptr, false);
      if (j.is_object()) {
        j["chat_template"] = *o.chat_template;
        write_file_atomic(tc, j.dump(2) + "\n", true);
      }
    }
  }
  for (const auto& [name, text] : o.extra_files)
    write_file_atomic(folder / name, text, /*overwrite=*/true);  // replaces a base's copy
}

}  // namespace

std::int64_t write_model(const HfModel& config_from, const std::vector<OutputTensor>& tensors,
                         const fs::path& out, const PieceProducer& produce, const ModelOutputOptions& o) {
  if (o.dtype && (!is_float_dtype(*o.dtype) || *o.dtype == DType::F64))
    throw usage_error("--dtype: a model is written as f32, f16 or bf16");
  std::vector<TensorSpec> specs;
  std::vector<std::uint64_t> bytes;
  for (const auto& t : tensors) specs.push_back({t.name, t.dtype, t.shape}), bytes.push_back(specs.back().nbytes());
  SharedOutput steps(o.peers);
  // This worker's tensors (all of them alone); with shard_per_rank every worker's first tensor
  // starts a shard, so no shard holds two workers' tensors.
  Peers* const peers = steps.peers();
  const auto [first, last] = peers ? share_of(bytes, peers->rank(), peers->size())
                                   : std::pair<std::size_t, std::size_t>{0, tensors.size()};
  std::vector<std::size_t> starts;
  if (peers && o.shard_per_rank)
    for (int w = 0; w < peers->size(); ++w) starts.push_back(share_of(bytes, w, peers->size()).first);
  const std::map<std::string, std::string> metadata{{"format", "pt"}};
  std::optional<StagedDir> staged;
  std::optional<ShardedWriter> writer;
  steps.open(
      {},
      [&] {
        staged.emplace(out, o.overwrite);
        write_model_files(config_from, staged->path(), o);
        writer.emplace(staged->path(), specs, o.max_shard_bytes, metadata, starts);
        std::vector<std::string> files;
        for (const auto& f : writer->writing_paths()) files.push_back(f.string());
        return files;
      },
      [&](const std::vector<std::string>& files) {
        writer.emplace(ShardedWriter::Join{}, out, specs, o.max_shard_bytes,
                       std::vector<fs::path>(files.begin(), files.end()), metadata, starts);
      });
  if (o.write_behind_bytes != 0 && writer) writer->write_behind(o.write_behind_bytes);
  std::vector<float> values;  // the copies' conversions, reused
  std::int64_t replaced = 0;
  const auto others = steps.write_share(
      [&] {
        for (std::size_t i = first; i < last; ++i) {
          throw_if_interrupted("merge");
          const auto& t = tensors[i];
          const bool is_float = is_float_dtype(t.dtype);
          std::uint64_t numel = 1;
          for (const auto d : t.shape) numel *= static_cast<std::uint64_t>(d);
          const PieceSink sink = [&](std::uint64_t at, std::span<const float> part) {
            writer->write_f32_part(t.name, at, part, o.threads);
          };
          if (is_float && produce(t.name, numel, sink)) {
            ++replaced;
          } else if (!t.source) {
            throw std::logic_error("write_model: no values for tensor '" + t.name + "'");
          } else {
            copy_tensor(*writer, t, o, values);
          }
          if (o.progress) o.progress(i + 1, tensors.size(), t.name);
        }
      },
      [&] { writer->commit(); }, [&] { return writer->written_names(); });
  std::int64_t all_replaced = 0;
  for (const auto& count : steps.gather(std::to_string(replaced))) all_replaced += std::stoll(count);
  steps.commit([&] {
    throw_if_interrupted("merge");
    for (const auto& name : others) writer->written_elsewhere(name);
    writer->commit();
    staged->commit();
  });
  return all_replaced;
}

}  // namespace revmerge
