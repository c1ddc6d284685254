// RMM compute on LLM-shaped synthetic adapters, per backend: each module's BF16 factors are put
// in backend memory first (not timed), then the module's whole RMM — the per-position routine,
// the error Grams, the error terms — is queued and waited for (timed). With `--device both` the
// CPU's and the GPU's stored tensors are compared byte for byte (the routine's promise) and
// their error terms to a tolerance (different GEMM libraries sum in different orders).
//
//   revmerge_bench_rmm --model llama-7b --tasks 8 --rank 64 --basis 4 --layers 1 --device both
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <future>
#include <random>

#include "backend/blas_core.hpp"
#include "backend/registry.hpp"
#include "llm_shapes.hpp"
#include "methods/rmm_module.hpp"
#include "synthetic.hpp"
#include "timing.hpp"

namespace rb = revmerge::bench;
using rb::memcpy_gbps;
using rb::seconds_since;
using i64 = std::int64_t;
using revmerge::DType;

namespace {

// One module's factors as a file holds them: per task A (r × in) then B (out × r), BF16,
// scaled like trained factors (structure: bench/synthetic.hpp).
std::vector<std::uint16_t> bf16_module(i64 n, i64 r, i64 in, i64 out, std::mt19937& rng) {
  std::vector<float> a, b;
  rb::structured_factors(a, n, r * in, rng);
  rb::structured_factors(b, n, out * r, rng);
  std::vector<std::uint16_t> bytes(static_cast<std::size_t>(n * r * (in + out)));
  for (i64 t = 0; t < n; ++t) {
    auto* at = bytes.data() + t * r * (in + out);
    for (i64 i = 0; i < r * in; ++i) at[i] = revmerge::f32_to_bf16(0.02f * a[t * r * in + i]);
    for (i64 i = 0; i < out * r; ++i) at[r * in + i] = revmerge::f32_to_bf16(0.02f * b[t * out * r + i]);
  }
  return bytes;
}

struct Run {
  std::unique_ptr<revmerge::Backend> backend;
  std::vector<double> layer_seconds;
  std::vector<unsigned char> packed;  // the last module's results
};

}  // namespace

int run(int argc, char** argv) {
  CLI::App app{"RMM compute on LLM-shaped synthetic adapters, per backend"};
  std::string model = "llama-7b", device = "cpu", storage_name = "bf16";
  i64 tasks = 8, rank = 64, basis = 4, layers = 1;
  int threads = 0;
  unsigned seed = 2026;
  app.add_option("--model", model, "llama-7b, llama-13b, llama-70b or tiny");
  app.add_option("--tasks,-n", tasks, "number of adapters");
  app.add_option("--rank,-r", rank, "LoRA rank");
  app.add_option("--basis,-p", basis, "RMM basis size");
  app.add_option("--layers", layers, "layers to run (each layer has the same shapes)");
  app.add_option("--device", device, "cpu, cuda or both (compares the two)");
  app.add_option("--dtype", storage_name, "stored dtype: bf16 (default, as the inputs), f16, f32");
  app.add_option("--threads", threads, "CPU threads (0 = all cores)");
  app.add_option("--seed", seed, "RNG seed");
  CLI11_PARSE(app, argc, argv);
  const DType storage = revmerge::parse_float_dtype_option(storage_name, "--dtype");

  const auto shape = rb::model_shape(model);
  std::vector<Run> runs;
  for (const auto* d : device == "both" ? std::vector<const char*>{"cpu", "cuda"}
                                        : std::vector<const char*>{device.c_str()})
    runs.push_back({revmerge::make_backend(revmerge::parse_device_option(d), {threads, 0}), {}, {}});
  fmt::print("RMM compute: {} ({} of {} layers), n={} r={} p={}, BF16 inputs, {} stored, seed {}\n",
             model, layers, shape.layers, tasks, rank, basis, revmerge::dtype_name(storage), seed);
  for (const auto& run : runs) fmt::print("backend: {}\n", run.backend->name());

  double bytes = 0, flops = 0, worst_terms = 0;
  std::size_t bitwise_differ = 0;
  // A layer's modules are made side by side, each from its own generator (seeded by the seed,
  // the layer and the module): making them was most of a GPU run's time, one module after
  // another on one thread.
  const auto modules = shape.modules();
  const auto make_layer = [&](i64 layer) {
    std::vector<std::future<std::vector<std::uint16_t>>> made;
    for (std::size_t i = 0; i < modules.size(); ++i)
      made.push_back(std::async(std::launch::async, [&, i] {
        std::seed_seq seq{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(layer),
                          static_cast<std::uint32_t>(i)};
        std::mt19937 rng(seq);
        return bf16_module(tasks, rank, modules[i].in, modules[i].out, rng);
      }));
    std::vector<std::vector<std::uint16_t>> host;
    for (auto& m : made) host.push_back(m.get());
    return host;
  };
  for (i64 layer = 0; layer < layers; ++layer) {
    for (auto& run : runs) run.layer_seconds.push_back(0);
    const auto layer_host = make_layer(layer);
    for (std::size_t mi = 0; mi < modules.size(); ++mi) {
      const auto& mod = modules[mi];
      const revmerge::RmmShape s{tasks, rank, mod.in, mod.out, basis};
      const auto& host = layer_host[mi];
      const i64 m = mod.in + mod.out;
      bytes += 2.0 * tasks * rank * m;
      // Per position: Gram, basis, reconstruction; per module: the six r × r error Grams.
      flops += 2.0 * m * (rank * tasks * tasks + 2.0 * rank * tasks * basis) + 2.0 * 3 * tasks * rank * rank * m;
      const auto layout = revmerge::RmmPacked::layout(s, storage);
      for (auto& run : runs) {
        auto& be = *run.backend;
        auto input = be.allocate(host.size() * 2), packed = be.allocate(layout.bytes);
        be.upload(input.data(), host.data(), host.size() * 2, {});
        std::vector<revmerge::kernels::RmmTaskFactors> factors;
        for (i64 t = 0; t < tasks; ++t) {
          const auto* at = static_cast<const std::uint16_t*>(input.data()) + t * rank * m;
          factors.push_back({at, at + rank * mod.in, revmerge::kernels::ElemType::bf16,
                             static_cast<std::int32_t>(rank), 1.0f});
        }
        be.synchronize({});
        const auto t0 = std::chrono::steady_clock::now();
        auto work = revmerge::rmm_module_enqueue(be, s, factors, storage, packed.data(), {});
        be.synchronize({});
        run.layer_seconds.back() += seconds_since(t0);
        run.packed.resize(layout.bytes);
        be.download(run.packed.data(), packed.data(), layout.bytes, {});
        be.synchronize({});
      }
      if (runs.size() == 2) {
        // The stored tensors: everything before the error terms.
        if (std::memcmp(runs[0].packed.data(), runs[1].packed.data(), layout.terms) != 0) ++bitwise_differ;
        const auto r0 = revmerge::rmm_module_report(s, storage, runs[0].packed.data());
        const auto r1 = revmerge::rmm_module_report(s, storage, runs[1].packed.data());
        for (i64 t = 0; t < tasks; ++t)
          worst_terms = std::max(worst_terms, std::fabs(r1.delta_error[t] - r0.delta_error[t]) /
                                                  std::max(r0.delta_error[t], 1e-6));
      }
    }
  }
  const double host_bw = memcpy_gbps();
  fmt::print("\n{:<44} {:>10} {:>12} {:>8} {:>9}\n", "backend", "seconds", "median/layer", "GB/s", "GFLOP/s");
  for (auto& run : runs) {
    double total = 0;
    for (const double x : run.layer_seconds) total += x;
    auto sorted = run.layer_seconds;
    std::sort(sorted.begin(), sorted.end());
    fmt::print("{:<44} {:>10.3f} {:>12.4f} {:>8.2f} {:>9.1f}\n", run.backend->name(), total,
               sorted[sorted.size() / 2], bytes / total / 1e9, flops / total / 1e9);
  }
  fmt::print("\ninputs: {:.1f} MB of BF16 factors; host memcpy bandwidth now {:.1f} GB/s, so one "
             "pass over them takes at least {:.4f} s on the host\n",
             bytes / 1e6, host_bw, bytes / (host_bw * 1e9));
  if (runs.size() == 2) {
    double t0 = 0, t1 = 0;
    for (const double x : runs[0].layer_seconds) t0 += x;
    for (const double x : runs[1].layer_seconds) t1 += x;
    fmt::print("speed-up of {} over {}: {:.1f}x\n", runs[1].backend->name(), runs[0].backend->name(), t0 / t1);
    fmt::print("GPU vs CPU: stored tensors {} ({} of {} modules differ); largest delta-error "
               "difference {:.2e} (relative)\n",
               bitwise_differ ? "DIFFER" : "bitwise identical", bitwise_differ,
               static_cast<std::size_t>(layers) * shape.modules().size(), worst_terms);
    if (bitwise_differ || !(worst_terms < 1e-4)) {
      fmt::print("GPU and CPU DISAGREE\n");
      return 1;
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  revmerge::restart_for_blas_kernels(argv);  // the kernels revmerge itself would run
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "revmerge_bench_rmm: error: {}\n", e.what());
    return 1;
  }
}
