// revmerge_make_models: a synthetic base model and full fine-tunes of a real decoder shape
// (Llama 7B, 13B, 70B), for benchmarking `revmerge compress` and the RMM merge of full
// fine-tunes where Python is not at hand (the GPU check), by bench/compress_bench.py's recipe
// (synthetic_models.hpp).
//
//   revmerge_make_models --model llama-7b --tasks 3 --layers 1 --out DIR [--dtype bf16] [--force]
//
// writes DIR/base and DIR/ft-0 … DIR/ft-(n−1), each config.json + model.safetensors. Draws are
// counter-based (seed, tensor, element), so the files do not depend on the thread count.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/counter_rng.hpp"
#include "llm_shapes.hpp"
#include "synthetic_models.hpp"
#include "revmerge/dtype.hpp"
#include "revmerge/safetensors.hpp"

namespace rb = revmerge::bench;
namespace kr = revmerge::kernels;
using i64 = std::int64_t;

namespace {

void write_config(const std::filesystem::path& dir, const rb::ModelShape& shape, i64 layers) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json")
      << fmt::format("{{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], "
                     "\"hidden_size\": {}, \"intermediate_size\": {}, \"num_hidden_layers\": {}, "
                     "\"num_attention_heads\": {}, \"num_key_value_heads\": {}}}\n",
                     shape.hidden, shape.intermediate, layers, shape.heads, shape.kv_heads);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Write a synthetic base model and full fine-tunes of an LLM shape"};
  std::string model = "llama-7b", dtype = "bf16", out;
  i64 tasks = 3, layers = 1;
  std::uint64_t seed = 0;
  bool force = false;
  app.add_option("--model", model, "llama-7b, llama-13b, llama-70b or tiny");
  app.add_option("--tasks,-n", tasks, "number of fine-tunes");
  app.add_option("--layers", layers, "layers to write (default 1)");
  app.add_option("--dtype", dtype, "f32, f16 or bf16 (default bf16)");
  app.add_option("--seed", seed, "RNG seed");
  app.add_option("--out,-o", out, "folder that receives base and ft-0 ... ft-(n-1)")->required();
  app.add_flag("--force", force, "replace existing model files");
  CLI11_PARSE(app, argc, argv);
  try {
    const auto shape = rb::model_shape(model);
    if (layers <= 0 || layers > shape.layers) layers = shape.layers;
    const auto type = revmerge::parse_float_dtype_option(dtype, "--dtype");
    std::vector<revmerge::TensorSpec> specs;
    for (i64 layer = 0; layer < layers; ++layer)
      for (const auto& m : shape.modules())
        specs.push_back({fmt::format("model.layers.{}.{}.weight", layer, m.name), type, {m.out, m.in}});
    std::vector<std::filesystem::path> dirs{std::filesystem::path(out) / "base"};
    for (i64 t = 0; t < tasks; ++t) dirs.push_back(std::filesystem::path(out) / fmt::format("ft-{}", t));
    std::vector<revmerge::SafetensorsWriter> writers;
    for (const auto& dir : dirs) {
      write_config(dir, shape, layers);
      writers.emplace_back(dir / "model.safetensors", specs, std::map<std::string, std::string>{},
                           force);
    }
    std::vector<float> w, ft;
    for (const auto& spec : specs) {
      const i64 rows = spec.shape[0], cols = spec.shape[1];
      const auto stream = kr::stream_id(spec.name);
      rb::synthetic_base(w, rows, cols, seed, stream);
      writers[0].write_f32(spec.name, w);
      for (i64 t = 0; t < tasks; ++t) {
        rb::synthetic_fine_tune(w, ft, rows, cols, seed, stream, t);
        writers[1 + t].write_f32(spec.name, ft);
      }
    }
    for (auto& wr : writers) wr.commit();
    fmt::print("wrote a {}-shaped base and {} fine-tunes ({} layers, {}) under {}\n", model, tasks,
               layers, dtype, out);
  } catch (const std::exception& e) {
    fmt::print(stderr, "revmerge_make_models: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
