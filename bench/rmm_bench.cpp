// RMM compute throughput on LLM-shaped synthetic adapter stacks, per backend, with the CPU and
// GPU results compared on the same inputs. File I/O is not part of this benchmark (see the
// scheduler benchmark); it times rmm_module from host stacks to host results.
//
//   revmerge_bench_rmm --model llama-7b --tasks 8 --rank 64 --basis 4 --layers 1 --device both
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>

#include "backend/registry.hpp"
#include "llm_shapes.hpp"
#include "synthetic.hpp"
#include "methods/rmm_module.hpp"

namespace rb = revmerge::bench;
using revmerge::RmmModuleResult;
using i64 = std::int64_t;

namespace {

// Stacks scaled like trained factors (structure: bench/synthetic.hpp).
void synth(std::vector<float>& v, i64 n, i64 size, std::mt19937& rng) {
  rb::structured_factors(v, n, size, rng);
  for (auto& x : v) x *= 0.02f;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Largest |x̂_gpu − x̂_cpu| / max|x̂| over every position of one side (invariant to basis signs).
double recon_difference(const revmerge::RmmSide& x, const revmerge::RmmSide& y, i64 m, i64 r, i64 p, i64 n) {
  double worst = 0, scale = 1e-30;
  for (i64 j = 0; j < m; ++j)
    for (i64 k = 0; k < r; ++k)
      for (i64 i = 0; i < n; ++i) {
        double a = x.mean[j * r + k], b = y.mean[j * r + k];
        for (i64 q = 0; q < p; ++q) {
          a += double(x.basis[(j * r + k) * p + q]) * x.coef[(j * p + q) * n + i];
          b += double(y.basis[(j * r + k) * p + q]) * y.coef[(j * p + q) * n + i];
        }
        worst = std::max(worst, std::fabs(a - b));
        scale = std::max(scale, std::fabs(b));
      }
  return worst / scale;
}

// Host memory bandwidth measured now: the floor for moving the stacks once.
double memcpy_gbps() {
  std::vector<char> a(256 << 20, 1), b(256 << 20);
  std::memcpy(b.data(), a.data(), a.size());
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 4; ++i) std::memcpy(b.data(), a.data(), a.size());
  return 4.0 * 2 * a.size() / seconds_since(t0) / 1e9;  // read + write
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"RMM throughput on LLM-shaped synthetic adapter stacks"};
  std::string model = "llama-7b", device = "cpu";
  i64 tasks = 8, rank = 64, basis = 4, layers = 1;
  int threads = 0;
  unsigned seed = 2026;
  bool both_schedules = false;
  app.add_option("--model", model, "llama-7b, llama-13b, llama-70b or tiny");
  app.add_option("--tasks,-n", tasks, "number of adapters");
  app.add_option("--rank,-r", rank, "LoRA rank");
  app.add_option("--basis,-p", basis, "RMM basis size");
  app.add_option("--layers", layers, "layers to run (each layer has the same shapes)");
  app.add_option("--device", device, "cpu, cuda or both (compares the two)");
  app.add_option("--threads", threads, "CPU threads (0 = all cores)");
  app.add_option("--seed", seed, "RNG seed");
  app.add_flag("--both-schedules", both_schedules,
               "on the CPU, also time the whole-batch schedule (the GPU's) beside position blocks, "
               "interleaved module by module, and check the results are the same bits");
  CLI11_PARSE(app, argc, argv);

  const auto shape = rb::model_shape(model);
  std::vector<std::string> devices = device == "both" ? std::vector<std::string>{"cpu", "cuda"}
                                                       : std::vector<std::string>{device};
  std::vector<std::unique_ptr<revmerge::Backend>> owned;
  for (const auto& d : devices) owned.push_back(revmerge::make_backend(revmerge::parse_device_option(d), {threads, 0}));
  // What is timed: each backend with its own schedule, and with --both-schedules the CPU's
  // whole-batch schedule too.
  struct Run {
    revmerge::Backend* backend;
    revmerge::RmmSchedule schedule;
    std::string name;
  };
  std::vector<Run> backends;
  for (const auto& be : owned) backends.push_back({be.get(), revmerge::RmmSchedule::automatic, be->name()});
  if (both_schedules && owned[0]->kind() == revmerge::BackendKind::cpu)
    backends.push_back({owned[0].get(), revmerge::RmmSchedule::whole_batch, "  same, whole-batch schedule"});

  fmt::print("RMM bench: {} ({} of {} layers), n={} r={} p={}, seed {}\n", model, layers,
             shape.layers, tasks, rank, basis, seed);
  for (const auto& be : owned) fmt::print("backend: {}\n", be->name());
  const double host_bw = memcpy_gbps();

  std::vector<double> total(backends.size(), 0.0);
  double bytes = 0, flops = 0, worst_recon = 0, worst_delta = 0;
  std::mt19937 rng(seed);
  std::vector<float> a, b;
  for (i64 layer = 0; layer < layers; ++layer)
    for (const auto& mod : shape.modules()) {
      synth(a, tasks, rank * mod.in, rng);
      synth(b, tasks, mod.out * rank, rng);
      const i64 m = mod.in + mod.out;
      bytes += 4.0 * tasks * rank * m;
      // Gram, basis, reconstruction per position; the r × r Grams of the delta error.
      flops += 2.0 * m * (rank * tasks * tasks + 2.0 * rank * tasks * basis) + 2.0 * 7 * tasks * rank * rank * m;
      std::vector<RmmModuleResult> results;
      for (std::size_t d = 0; d < backends.size(); ++d) {
        const auto t0 = std::chrono::steady_clock::now();
        results.push_back(revmerge::rmm_module(*backends[d].backend, {tasks, rank, mod.in, mod.out, basis},
                                               a.data(), b.data(), revmerge::DType::F32, {},
                                               backends[d].schedule));
        total[d] += seconds_since(t0);
      }
      if (both_schedules && results.size() == 2 &&
          (results[0].a.basis != results[1].a.basis || results[0].b.coef != results[1].b.coef ||
           results[0].delta_error != results[1].delta_error)) {
        fmt::print(stderr, "the two CPU schedules gave different results on {}\n", mod.name);
        return 1;
      }
      if (!both_schedules && results.size() == 2) {
        worst_recon = std::max({worst_recon, recon_difference(results[1].a, results[0].a, mod.in, rank, basis, tasks),
                                recon_difference(results[1].b, results[0].b, mod.out, rank, basis, tasks)});
        for (i64 t = 0; t < tasks; ++t)
          worst_delta = std::max(worst_delta, std::fabs(results[1].delta_error[t] - results[0].delta_error[t]) /
                                                  std::max(results[0].delta_error[t], 1e-6));
      }
    }
  fmt::print("\n{:<48} {:>10} {:>10} {:>10}\n", "backend", "seconds", "GB/s", "GFLOP/s");
  for (std::size_t d = 0; d < backends.size(); ++d)
    fmt::print("{:<48} {:>10.3f} {:>10.2f} {:>10.1f}\n", backends[d].name, total[d],
               bytes / total[d] / 1e9, flops / total[d] / 1e9);
  fmt::print("\ninput stacks: {:.1f} MB; host memcpy bandwidth now: {:.1f} GB/s, so one pass over "
             "the inputs takes at least {:.4f} s\n",
             bytes / 1e6, host_bw, bytes / (host_bw * 1e9));
  if (both_schedules && backends.size() == 2)
    fmt::print("position blocks: {:.2f}x the whole-batch schedule's speed, same bits\n", total[1] / total[0]);
  if (!both_schedules && backends.size() == 2) {
    fmt::print("speed-up of {} over {}: {:.1f}x\n", backends[1].name, backends[0].name, total[0] / total[1]);
    fmt::print("GPU vs CPU: largest reconstruction difference {:.2e} (relative to the largest "
               "factor entry), largest delta-error difference {:.2e} (relative)\n",
               worst_recon, worst_delta);
    if (!(worst_recon < 1e-4 && worst_delta < 1e-3)) {
      fmt::print("GPU and CPU DISAGREE\n");
      return 1;
    }
  }
  return 0;
}
