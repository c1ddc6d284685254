// revmerge_make_models: a synthetic base model and full fine-tunes of a real decoder shape
// (Llama 7B, 13B, 70B), for benchmarking `revmerge compress` and the RMM merge of full
// fine-tunes where Python is not at hand (the GPU check). The recipe is bench/compress_bench.py's:
// W ~ 0.02 · N(0, 1); each fine-tune adds Δ_t = U diag(s) V with 96 directions of weights
// s_j = 10⁻³ · 0.9ʲ, plus 10⁻⁵ · N(0, 1) noise — a decaying spectrum, as trained deltas have.
//
//   revmerge_make_models --model llama-7b --tasks 3 --layers 1 --out DIR [--dtype bf16] [--force]
//
// writes DIR/base and DIR/ft-0 … DIR/ft-(n−1), each config.json + model.safetensors. Draws are
// counter-based (seed, tensor, element), so the files do not depend on the thread count.
#include <CLI/CLI.hpp>
#include <cblas.h>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/counter_rng.hpp"
#include "llm_shapes.hpp"
#include "revmerge/dtype.hpp"
#include "revmerge/safetensors.hpp"

namespace rb = revmerge::bench;
namespace kr = revmerge::kernels;
using i64 = std::int64_t;

namespace {

void fill_normal(std::vector<float>& v, std::uint64_t seed, std::uint64_t stream, float scale) {
#pragma omp parallel for schedule(static)
  for (i64 i = 0; i < static_cast<i64>(v.size()); ++i)
    v[i] = scale * static_cast<float>(kr::counter_normal(seed, stream, static_cast<std::uint64_t>(i)));
}

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
    constexpr i64 k = 96;
    std::vector<float> w, delta, u, v;
    for (const auto& spec : specs) {
      const i64 rows = spec.shape[0], cols = spec.shape[1];
      const auto stream = kr::stream_id(spec.name);
      w.resize(static_cast<std::size_t>(rows * cols));
      fill_normal(w, seed, stream, 0.02f);
      writers[0].write_f32(spec.name, w);
      for (i64 t = 0; t < tasks; ++t) {
        const std::uint64_t task_seed = seed + 1000 + static_cast<std::uint64_t>(t);
        u.resize(static_cast<std::size_t>(rows * k));
        v.resize(static_cast<std::size_t>(k * cols));
        fill_normal(u, task_seed, stream, 1.0f);
        fill_normal(v, task_seed, stream + 1, 1.0f);
        for (i64 j = 0; j < k; ++j) {
          const float s = 1e-3f * static_cast<float>(std::pow(0.9, double(j)));
          for (i64 r = 0; r < rows; ++r) u[r * k + j] *= s;
        }
        delta.resize(w.size());
        fill_normal(delta, task_seed, stream + 2, 1e-5f);  // the noise; U diag(s) V goes on top
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, k, 1.0f, u.data(), k,
                    v.data(), cols, 1.0f, delta.data(), cols);
#pragma omp parallel for schedule(static)
        for (i64 i = 0; i < static_cast<i64>(w.size()); ++i) delta[i] += w[i];
        writers[1 + t].write_f32(spec.name, delta);
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
