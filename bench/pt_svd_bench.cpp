// PT-SVD throughput on LLM-shaped full fine-tunes: every task's delta of each module of one
// layer, from BF16 bytes in memory to U, S, V on the host, by the CPU's path (pt_svd: the delta
// formed in f64, f32 power iterations on all BLAS threads, one task after another) and by the
// batched engine (BatchedPtSvd: all tasks of a module in one batch, f64 throughout) on the
// chosen backends — the compression `revmerge compress` and the full-model merge run, without
// the files. Prints each beside the floor of moving the input bytes once, and how far their
// singular values are apart.
//
//   revmerge_bench_pt_svd --model llama-7b --tasks 8 --rank 64 --device both [--modules q_proj]
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "backend/blas_core.hpp"
#include "backend/registry.hpp"
#include "kernels/counter_rng.hpp"
#include "llm_shapes.hpp"
#include "synthetic_models.hpp"
#include "timing.hpp"
#include "methods/lowrank/batched_pt_svd.hpp"
#include "methods/lowrank/randomized_svd.hpp"
#include "revmerge/dtype.hpp"

namespace rb = revmerge::bench;
namespace kr = revmerge::kernels;
using rb::seconds_since;
using i64 = std::int64_t;

namespace {

// One module's base and fine-tunes as BF16 bytes (synthetic_models.hpp's recipe).
struct ModuleData {
  rb::ModuleShape shape;
  std::vector<std::byte> base;
  std::vector<std::vector<std::byte>> fts;
};

ModuleData make_module(const rb::ModuleShape& m, i64 tasks) {
  const auto stream = kr::stream_id(m.name);
  std::vector<float> w, ft;
  rb::synthetic_base(w, m.out, m.in, 0, stream);
  ModuleData out{m, std::vector<std::byte>(w.size() * 2), {}};
  revmerge::convert_from_f32(w.data(), revmerge::DType::BF16, out.base.data(), w.size());
  for (i64 t = 0; t < tasks; ++t) {
    rb::synthetic_fine_tune(w, ft, m.out, m.in, 0, stream, t);
    auto& bytes = out.fts.emplace_back(ft.size() * 2);
    revmerge::convert_from_f32(ft.data(), revmerge::DType::BF16, bytes.data(), ft.size());
  }
  return out;
}

// The CPU's path: Δ in f64 from the bytes, then pt_svd's randomized SVD, task after task.
std::vector<revmerge::TruncatedSvd> cpu_path(const ModuleData& md, const revmerge::RandomizedSvdOptions& o) {
  const auto count = static_cast<std::size_t>(md.shape.in * md.shape.out);
  std::vector<double> delta(count), base(count);
  revmerge::convert_to_f64(revmerge::DType::BF16, md.base.data(), base.data(), count);
  std::vector<revmerge::TruncatedSvd> out;
  for (const auto& ft : md.fts) {
    revmerge::convert_to_f64(revmerge::DType::BF16, ft.data(), delta.data(), count);
    for (std::size_t i = 0; i < count; ++i) delta[i] -= base[i];
    out.push_back(revmerge::randomized_svd(delta, md.shape.in, md.shape.out, o));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  revmerge::restart_for_blas_kernels(argv);  // the kernels revmerge itself would run
  CLI::App app{"PT-SVD throughput on LLM-shaped full fine-tunes"};
  std::string model = "llama-7b", device = "cpu", only;
  i64 tasks = 8, rank = 64, oversampling = 8;
  int power_iterations = 2;
  app.add_option("--model", model, "llama-7b, llama-13b, llama-70b or tiny");
  app.add_option("--tasks,-n", tasks, "fine-tunes");
  app.add_option("--rank,-r", rank, "rank kept");
  app.add_option("--oversampling", oversampling, "sketch columns beyond the rank");
  app.add_option("--power-iterations", power_iterations, "power iterations");
  app.add_option("--device", device, "cpu, cuda or both: where the batched engine runs");
  app.add_option("--modules", only, "only these modules (comma-separated: q_proj,up_proj)");
  CLI11_PARSE(app, argc, argv);
  try {
    std::vector<ModuleData> modules;
    std::uint64_t bytes = 0;
    for (const auto& m : rb::model_shape(model).modules()) {
      if (!only.empty() && only.find(m.name.substr(m.name.rfind('.') + 1)) == std::string::npos) continue;
      modules.push_back(make_module(m, tasks));
      bytes += static_cast<std::uint64_t>(m.in * m.out) * 2 * (tasks + 1);
    }
    fmt::print("{} layer{}, {} fine-tunes, rank {} (+{}), {} power iterations: {:.2f} GB of BF16 "
               "weights\n", model, only.empty() ? "" : " (" + only + ")", tasks, rank, oversampling,
               power_iterations, bytes / 1e9);
    // The CPU path, once per module, on all BLAS threads.
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::vector<revmerge::TruncatedSvd>> reference;
    for (const auto& md : modules)
      reference.push_back(cpu_path(md, {rank, oversampling, power_iterations, 0, kr::stream_id(md.shape.name)}));
    const double cpu_seconds = seconds_since(t0);
    fmt::print("{:<28} {:>8.3f} s  ({:.1f} ms per task and module)\n", "pt_svd on the cpu, in turn",
               cpu_seconds, 1e3 * cpu_seconds / double(tasks * static_cast<i64>(modules.size())));

    std::vector<std::string> devices = device == "both" ? std::vector<std::string>{"cpu", "cuda"}
                                                        : std::vector<std::string>{device};
    for (const auto& d : devices) {
      const auto backend = revmerge::make_backend(revmerge::parse_device_option(d), {});
      revmerge::BatchedPtSvd engine(*backend);
      // The floor: the input bytes moved once (uploaded to a GPU, or copied on the host).
      const std::size_t probe = 256u << 20;
      auto src = backend->allocate_staging(probe), dst = backend->allocate(probe);
      std::memset(src.data(), 1, probe);
      backend->upload(dst.data(), src.data(), probe, {});
      backend->synchronize({});
      t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 4; ++i) backend->upload(dst.data(), src.data(), probe, {});
      backend->synchronize({});
      const double gbps = 4.0 * probe / seconds_since(t0) / 1e9;
      double worst = 0;
      t0 = std::chrono::steady_clock::now();
      for (std::size_t mi = 0; mi < modules.size(); ++mi) {
        const auto& md = modules[mi];
        std::vector<revmerge::RawWeight> fts;
        for (const auto& f : md.fts) fts.push_back({f.data(), revmerge::DType::BF16});
        const auto got = engine.run({md.base.data(), revmerge::DType::BF16}, fts, md.shape.in, md.shape.out,
                                    {rank, oversampling, power_iterations, 0, kr::stream_id(md.shape.name)});
        for (i64 t = 0; t < tasks; ++t)
          for (i64 c = 0; c < got[t].svd.k; ++c)
            worst = std::max(worst, std::abs(got[t].svd.s[c] - reference[mi][t].s[c]) / reference[mi][t].s[0]);
      }
      const double seconds = seconds_since(t0);
      const auto counts = engine.counts();
      fmt::print("{:<28} {:>8.3f} s  ({:.2f}x the CPU path; {}; {} of {} re-orthonormalisations "
                 "by Householder)\n", "batched on " + d, seconds, cpu_seconds / seconds,
                 backend->name(), counts.householder, counts.orthonormalized);
      fmt::print("{:<28} {:>8.3f} s  (the input bytes once at {:.1f} GB/s, measured now)\n",
                 "  floor", bytes / 1e9 / gbps, gbps);
      fmt::print("{:<28} {:>8.1e}    (largest |σ − σ_cpu| / σ₁ over tasks and modules)\n",
                 "  against pt_svd", worst);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "revmerge_bench_pt_svd: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
