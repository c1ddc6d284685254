// Writes synthetic LoRA adapters of real LLM shapes as PEFT folders, with the structure task
// adapters show (a shared part, two task groups, each task's own part, noise), so RMM's spectra
// look like real adapters' rather than white noise.
//
//   revmerge_make_adapters --model llama-7b --tasks 8 --rank 64 --layers 32 --dtype bf16 --out DIR
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <random>
#include <thread>

#include "llm_shapes.hpp"
#include "synthetic.hpp"
#include "revmerge/peft.hpp"

namespace rb = revmerge::bench;
using i64 = std::int64_t;

int main(int argc, char** argv) {
  CLI::App app{"Write synthetic LLM-shaped LoRA adapters as PEFT folders"};
  std::string model = "llama-7b", out, dtype = "bf16";
  i64 tasks = 8, rank = 64, layers = 0;
  unsigned seed = 7;
  bool force = false;
  app.add_option("--model", model, "llama-7b, llama-13b, llama-70b or tiny");
  app.add_option("--tasks,-n", tasks, "number of adapters");
  app.add_option("--rank,-r", rank, "LoRA rank");
  app.add_option("--layers", layers, "layers to write (default: all of the model's)");
  app.add_option("--dtype", dtype, "f32, f16 or bf16");
  app.add_option("--seed", seed, "RNG seed");
  app.add_option("--out,-o", out, "folder that receives task-0 ... task-(n-1)")->required();
  app.add_flag("--force", force, "replace existing task folders");
  CLI11_PARSE(app, argc, argv);
  try {
    const auto shape = rb::model_shape(model);
    if (layers <= 0 || layers > shape.layers) layers = shape.layers;
    const auto type = revmerge::parse_float_dtype_option(dtype, "--dtype");
    // One streaming writer per task; one module of every task in memory at a time, so the
    // 70b shape (GBs per adapter) is written with a few hundred MB.
    std::vector<revmerge::LoraModuleShape> shapes;
    for (i64 layer = 0; layer < layers; ++layer)
      for (const auto& m : shape.modules())
        shapes.push_back({fmt::format("model.layers.{}.{}", layer, m.name), rank, m.in, m.out});
    revmerge::AdapterWriteOptions o;
    o.base_model_name_or_path = "synthetic/" + model;
    o.task_type = "CAUSAL_LM";
    o.dtype = type;
    o.overwrite = force;
    std::vector<revmerge::PeftAdapterWriter> writers;
    for (i64 t = 0; t < tasks; ++t)
      writers.emplace_back(std::filesystem::path(out) / fmt::format("task-{}", t), shapes, o);
    // Modules are made in parallel, a chunk at a time (one per thread), each from its own
    // generator seeded by (seed, module index), and written in order: the files do not depend
    // on the thread count, and a 32-layer set takes seconds on a many-core machine.
    const std::size_t chunk = std::max(1u, std::thread::hardware_concurrency());
    struct Made {
      std::vector<float> a, b;
    };
    std::vector<Made> made(chunk);
    for (std::size_t first = 0; first < shapes.size(); first += chunk) {
      const std::size_t count = std::min(chunk, shapes.size() - first);
      std::vector<std::thread> threads;
      for (std::size_t k = 0; k < count; ++k)
        threads.emplace_back([&, k] {
          const auto& ms = shapes[first + k];
          std::seed_seq seq{seed, static_cast<unsigned>(first + k)};
          std::mt19937 rng(seq);
          auto& [a, b] = made[k];
          rb::structured_factors(a, tasks, rank * ms.in, rng);
          rb::structured_factors(b, tasks, ms.out * rank, rng);
          // Scaled like trained factors: A ~ 1/√in (Kaiming-like init), B small.
          const float sa = 1.0f / std::sqrt(float(ms.in)), sb = 0.01f;
          for (auto& x : a) x *= sa;
          for (auto& x : b) x *= sb;
        });
      for (auto& t : threads) t.join();
      for (std::size_t k = 0; k < count; ++k) {
        const auto& ms = shapes[first + k];
        const auto& [a, b] = made[k];
        for (i64 t = 0; t < tasks; ++t)
          writers[t].write(ms.path, std::span(a).subspan(t * rank * ms.in, rank * ms.in),
                           std::span(b).subspan(t * ms.out * rank, ms.out * rank));
      }
    }
    for (auto& w : writers) w.commit();
    fmt::print("wrote {} {}-shaped adapters ({} layers, rank {}, {}) under {}\n", tasks, model,
               layers, rank, dtype, out);
  } catch (const std::exception& e) {
    fmt::print(stderr, "revmerge_make_adapters: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
