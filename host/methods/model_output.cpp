#include "methods/model_output.hpp"

#include <nlohmann/json.hpp>

#include "core/atomic_output.hpp"
#include "core/interrupt.hpp"
#include "core/json_file.hpp"
#include "revmerge/checkpoint.hpp"
#include "revmerge/error.hpp"

namespace fs = std::filesystem;

namespace revmerge {
namespace {

// The base's config.json with the dtype the weights are written in: transformers loads a model
// in its config's dtype, so a bf16 model whose config says float32 takes twice the memory.
// Both spellings are set where present ("dtype" since transformers 4.56, "torch_dtype" before).
std::string config_with_dtype(const fs::path& config, DType dtype) {
  auto j = nlohmann::ordered_json::parse(read_text_file(config), nullptr, false);
  if (!j.is_object())
    throw format_error(config.string() + ": not a JSON object; cannot record the dtype written");
  const char* name = dtype == DType::BF16 ? "bfloat16" : dtype == DType::F16 ? "float16" : "float32";
  bool set = false;
  for (const char* key : {"dtype", "torch_dtype"})
    if (j.contains(key)) j[key] = name, set = true;
  if (!set) j["torch_dtype"] = name;
  return j.dump(2) + "\n";
}

}  // namespace

std::int64_t write_full_model(const HfModel& base, const fs::path& out,
                              const TensorProducer& produce, const ModelOutputOptions& o) {
  if (o.dtype && (!is_float_dtype(*o.dtype) || *o.dtype == DType::F64))
    throw usage_error("--dtype: a model is written as f32, f16 or bf16");
  StagedDir staged(out, o.overwrite);
  // config.json and the small files that travel with it (not the weights, not the index).
  for (const auto& entry : fs::directory_iterator(base.dir())) {
    const auto name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.ends_with(".safetensors") || name == kShardIndexName ||
        name.ends_with(".bin") || name.ends_with(".pt"))
      continue;
    if (name == "config.json" && o.dtype)
      write_file_atomic(staged.path() / name, config_with_dtype(entry.path(), *o.dtype), false);
    else if (name.ends_with(".json") || name.ends_with(".txt") || name.ends_with(".model"))
      write_file_atomic(staged.path() / name, read_text_file(entry.path()), false);
  }
  for (const auto& [name, text] : o.extra_files)
    write_file_atomic(staged.path() / name, text, /*overwrite=*/true);  // replaces a base's copy
  const auto& tensors = base.checkpoint().tensors();
  std::vector<TensorSpec> specs;
  for (const auto& t : tensors) {
    auto dtype = t.info->dtype;
    if (o.dtype && is_float_dtype(dtype)) dtype = *o.dtype;
    specs.push_back({t.info->name, dtype, t.info->shape});
  }
  ShardedWriter writer(staged.path(), specs, o.max_shard_bytes);
  std::vector<float> values;
  std::int64_t replaced = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    throw_if_interrupted("merge");
    const auto& t = tensors[i];
    const auto& name = t.info->name;
    const bool is_float = is_float_dtype(t.info->dtype);
    values.assign(is_float ? static_cast<std::size_t>(t.info->numel()) : 0, 0.0f);
    if (is_float && produce(name, values)) {
      writer.write_f32(name, values);
      ++replaced;
    } else if (is_float && specs[i].dtype != t.info->dtype) {
      t.file->read(*t.info, values);
      writer.write_f32(name, values);
    } else {
      writer.write(name, t.file->bytes(*t.info));
    }
    if (o.progress) o.progress(i + 1, tensors.size(), name);
  }
  throw_if_interrupted("merge");
  writer.commit();
  staged.commit();
  return replaced;
}

}  // namespace revmerge
