// The streamed RMM pipeline: the same bytes as one module at a time, memory held to the plan,
// a budget too small refused by name, progress by layer, interrupts leaving nothing behind.
#include <gtest/gtest.h>

#include <cmath>

#include "backend/backend_cases.hpp"
#include "backend/deferred_backend.hpp"
#include "backend/registry.hpp"
#include "core/interrupt.hpp"
#include "core/memory_info.hpp"
#include "methods/adapter_writer.hpp"
#include "methods/on_backend.hpp"
#include "revmerge/bundle.hpp"
#include "revmerge/error.hpp"
#include "revmerge/rmm.hpp"
#include "scheduler/memory_plan.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using test::ModuleSpec;

// Six layers of three modules of three shapes (named so the test writer's target_modules
// select them); one task of a lower rank.
std::vector<test::WrittenAdapter> layered_tasks(const test::TempDir& tmp, int n) {
  std::vector<ModuleSpec> modules;
  for (int l = 0; l < 6; ++l)
    for (const auto& [name, in, out] : {std::tuple{"self_attn.q_proj", 24, 24},
                                        std::tuple{"self_attn.v_proj", 24, 8},
                                        std::tuple{"mlp.q_proj", 40, 24}})
      modules.push_back({"model.layers." + std::to_string(l) + "." + name, 6, in, out});
  std::vector<test::WrittenAdapter> tasks;
  for (int t = 0; t < n; ++t) {
    auto m = modules;
    if (t == 1)
      for (auto& x : m) x.rank = 4;
    tasks.push_back(test::write_adapter(tmp / ("task" + std::to_string(t)), t == 1 ? 4 : 6, 8, m,
                                        "", 100 + t));
  }
  return tasks;
}

// merge_rmm on the named device: "cuda" through the options, "deferred" (a CPU backend that
// behaves like a discrete device, backend/deferred_backend.hpp) through merge_rmm_on.
BundleManifest merge_on(const std::string& device, RmmMergeOptions o) {
  if (device == "cuda") {
    o.device = Device::cuda;
    return merge_rmm(o);
  }
  if (device == "deferred") return merge_rmm_on(o, [] { return test::make_deferred_backend(); });
  return merge_rmm(o);
}

// The bytes a usage_error from a too-small --memory-budget says one module needs.
std::uint64_t bytes_needed(RmmMergeOptions o, const std::string& device = "cpu") {
  o.memory_budget = 4096;
  try {
    merge_on(device, o);
  } catch (const usage_error& e) {
    return test::budget_bytes_named(e.what());
  }
  ADD_FAILURE() << "a 4 KiB budget was accepted";
  return 0;
}

// The manifest without its "backend" line (which names the thread count).
std::string manifest_without_backend(const std::filesystem::path& bundle) {
  auto text = test::read_bytes(bundle / kBundleManifestName);
  const auto at = text.find("\"backend\"");
  return text.erase(at, text.find('\n', at) - at);
}

RmmMergeOptions options_for(const std::vector<test::WrittenAdapter>& tasks, std::int64_t p,
                            const std::filesystem::path& out) {
  RmmMergeOptions o;
  for (const auto& t : tasks) o.tasks.push_back({t.dir.filename(), t.dir});
  o.basis = p;
  o.out = out;
  o.device = Device::cpu;
  return o;
}

TEST(RmmPipeline, PipelinedOutputIsBitwiseTheOneModuleAtATimePath) {
  test::TempDir tmp;
  const auto tasks = layered_tasks(tmp, 5);
  auto seq = options_for(tasks, 3, tmp / "sequential");
  seq.sequential = true;
  seq.threads = 1;
  PipelineStats seq_stats;
  seq.stats = &seq_stats;
  merge_rmm(seq);
  EXPECT_FALSE(seq_stats.pipelined);
  const auto want = test::read_bytes(seq.out / kBundleTensorsName);
  const auto want_manifest = manifest_without_backend(seq.out);
  // Whatever the ring size (exactly the bytes one module needs gives one slot; on the CPU that
  // depends on the thread count, each thread holding one block's scratch) and threads.
  for (const bool tight : {false, true})
    for (const int threads : {1, 2}) {
      auto o = options_for(tasks, 3, tmp / ("pipelined" + std::to_string(tight) + "_" + std::to_string(threads)));
      o.threads = threads;
      const std::uint64_t budget = tight ? bytes_needed(o) : 0;
      o.memory_budget = budget;
      PipelineStats stats;
      o.stats = &stats;
      merge_rmm(o);
      EXPECT_TRUE(stats.pipelined);
      EXPECT_EQ(stats.modules, 18u);
      EXPECT_EQ(stats.layers, 6u);
      EXPECT_EQ(test::read_bytes(o.out / kBundleTensorsName), want) << budget << " " << threads;
      EXPECT_EQ(manifest_without_backend(o.out), want_manifest);
      if (budget) EXPECT_EQ(stats.staging_slots, 1);
      if (budget) EXPECT_EQ(stats.planned_host_bytes, budget);
    }
}

// Several writer threads (each module's tensors at their own offsets, modules finishing in any
// order) and several reader threads: the same bytes and manifest as one module at a time.
TEST(RmmPipeline, SeveralWritersAndReadersWriteTheSameBytes) {
  test::TempDir tmp;
  const auto tasks = layered_tasks(tmp, 5);
  for (const std::string device : {"cpu", "deferred"}) {
    // (The device's error Grams are split as a GPU's are: its manifest is its own.)
    auto seq = options_for(tasks, 3, tmp / ("sequential-" + device));
    seq.sequential = true;
    merge_on(device, seq);
    auto o = options_for(tasks, 3, tmp / ("many-" + device));
    o.writer_threads = 3;
    o.reader_threads = 3;
    std::vector<std::size_t> done;
    o.progress = [&](std::size_t k, std::size_t, const std::string&) { done.push_back(k); };
    merge_on(device, o);
    EXPECT_EQ(test::read_bytes(o.out / kBundleTensorsName),
              test::read_bytes(seq.out / kBundleTensorsName)) << device;
    EXPECT_EQ(manifest_without_backend(o.out), manifest_without_backend(seq.out)) << device;
    ASSERT_EQ(done.size(), 18u);  // progress counts modules written, one call each
    for (std::size_t k = 0; k < done.size(); ++k) EXPECT_EQ(done[k], k + 1);
  }
}

// On a device (a GPU, or the deferred backend that behaves like one): the pipeline (pinned
// staging ring, copy stream, compute stream sharing one device pool) gives the bytes of the
// one-module-at-a-time path, and what it stores reverts to the CPU's reconstructions within f32
// rounding (bases may differ in sign, so factors are compared after reconstruction). The `cuda`
// case is labelled `gpu` by ctest.
class RmmPipelineOn : public ::testing::TestWithParam<std::string> {};

TEST_P(RmmPipelineOn, PipelinedIsBitwiseSequentialAndRevertsLikeTheCpu) {
  const std::string device = GetParam();
  if (const auto why = cuda_unavailable_reason(); device == "cuda" && !why.empty())
    REVMERGE_SKIP_WITHOUT_GPU(why);
  test::TempDir tmp;
  const auto tasks = layered_tasks(tmp, 5);
  auto cpu = options_for(tasks, 3, tmp / "cpu");
  merge_rmm(cpu);
  auto seq = options_for(tasks, 3, tmp / "gpu-sequential");
  seq.sequential = true;
  merge_on(device, seq);
  const auto want = test::read_bytes(seq.out / kBundleTensorsName);
  // The default ring, and the smallest budget that both the host (one staging slot) and the
  // device accept: each refusal names the bytes its side needs.
  auto tight_opts = options_for(tasks, 3, tmp / "unused");
  std::uint64_t tight = bytes_needed(tight_opts, device);
  tight_opts.memory_budget = tight;
  try {
    merge_on(device, tight_opts);
  } catch (const usage_error& e) {
    const std::string msg = e.what();
    ASSERT_NE(msg.find("of device memory is too small"), std::string::npos) << msg;
    tight = test::budget_bytes_named(msg);
  }
  for (const std::uint64_t budget : {std::uint64_t{0}, tight}) {
    auto o = options_for(tasks, 3, tmp / ("gpu" + std::to_string(budget)));
    o.memory_budget = budget;
    PipelineStats stats;
    o.stats = &stats;
    merge_on(device, o);
    EXPECT_TRUE(stats.pipelined);
    EXPECT_GT(stats.upload_seconds, 0.0);
    EXPECT_GT(stats.backend_peak_bytes, 0u);
    // Device memory as planned: inputs of three modules in flight, one module's work (the
    // solver's f64 copies and workspace included), cached blocks freed before passing it.
    EXPECT_LE(stats.backend_peak_bytes, stats.planned_device_bytes) << budget;
    EXPECT_EQ(test::read_bytes(o.out / kBundleTensorsName), want) << budget;
  }
  const Bundle gpu_bundle(seq.out), cpu_bundle(cpu.out);
  const auto& gm = gpu_bundle.manifest();
  ASSERT_EQ(gm.modules.size(), cpu_bundle.manifest().modules.size());
  for (std::size_t mi = 0; mi < gm.modules.size(); ++mi) {
    const auto& cm = cpu_bundle.manifest().modules[mi];
    for (std::size_t t = 0; t < tasks.size(); ++t) {
      EXPECT_NEAR(gm.modules[mi].delta_error[t], cm.delta_error[t], 1e-4) << cm.path << " " << t;
      const auto g = revert_module(gpu_bundle, mi, static_cast<std::int64_t>(t));
      const auto c = revert_module(cpu_bundle, mi, static_cast<std::int64_t>(t));
      for (const auto& [x, y] : {std::pair{&g.a, &c.a}, std::pair{&g.b, &c.b}}) {
        ASSERT_EQ(x->size(), y->size());
        double diff = 0, norm = 0;
        for (std::size_t i = 0; i < x->size(); ++i) {
          diff += std::pow(double((*x)[i]) - (*y)[i], 2);
          norm += std::pow(double((*y)[i]), 2);
        }
        EXPECT_LE(std::sqrt(diff), 1e-5 * std::sqrt(norm) + 1e-6) << cm.path << " task " << t;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, RmmPipelineOn, ::testing::Values("deferred", "cuda"),
                         [](const auto& info) { return info.param; });

TEST(RmmPipeline, MemoryStaysWithinThePlanAndThePlanWithinTheBudget) {
  test::TempDir tmp;
  const auto tasks = layered_tasks(tmp, 4);
  for (const std::uint64_t budget : {std::uint64_t{300} << 10, std::uint64_t{600} << 10, std::uint64_t{64} << 20}) {
    auto o = options_for(tasks, 2, tmp / ("b" + std::to_string(budget)));
    o.memory_budget = budget;
    PipelineStats stats;
    o.stats = &stats;
    merge_rmm(o);
    EXPECT_EQ(stats.host_budget, budget);
    EXPECT_LE(stats.planned_host_bytes, budget);
    // On the CPU the backend's pool holds the staging ring and the work memory: its peak is
    // what the plan promised at most (results live in host vectors, counted in the plan too).
    EXPECT_LE(stats.backend_peak_bytes, stats.planned_host_bytes) << budget;
    EXPECT_GE(stats.staging_slots, 1);
    EXPECT_LE(stats.staging_slots, 4);
    EXPECT_GT(stats.bytes_read, 0u);
    EXPECT_GT(stats.bytes_written, 0u);
    EXPECT_GT(stats.compute_seconds, 0.0);
  }
}

TEST(RmmPipeline, ABudgetTooSmallForOneModuleNamesItsLayerAndBytesAndWritesNothing) {
  test::TempDir tmp;
  const auto tasks = layered_tasks(tmp, 4);
  auto o = options_for(tasks, 2, tmp / "bundle");
  o.memory_budget = 4096;
  try {
    merge_rmm(o);
    FAIL() << "a 4 KiB budget was accepted";
  } catch (const usage_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("--memory-budget 4.00 KiB"), std::string::npos) << msg;
    EXPECT_NE(msg.find("module 'model.layers."), std::string::npos) << msg;
    EXPECT_NE(msg.find("(layer "), std::string::npos) << msg;
    EXPECT_NE(msg.find(" bytes: staging "), std::string::npos) << msg;
  }
  EXPECT_FALSE(std::filesystem::exists(o.out));
  for (const auto& name : test::list_dir(tmp.path())) EXPECT_EQ(name.find("bundle"), std::string::npos);
}

TEST(RmmPipeline, ProgressCountsLayersAndBytesUpToTheTotal) {
  test::TempDir tmp;
  const auto tasks = layered_tasks(tmp, 3);
  auto o = options_for(tasks, 1, tmp / "bundle");
  std::vector<PipelineProgress> seen;
  o.pipeline_progress = [&](const PipelineProgress& p) { seen.push_back(p); };
  merge_rmm(o);
  ASSERT_EQ(seen.size(), 6u);
  for (std::size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].layers_done, i + 1);
    EXPECT_EQ(seen[i].layers, 6u);
    EXPECT_EQ(seen[i].finished, i + 1 == seen.size());
    if (i) EXPECT_GE(seen[i].bytes_read, seen[i - 1].bytes_read);
  }
  EXPECT_EQ(seen.back().bytes_read, seen.back().bytes_total);
}

TEST(RmmPipeline, AnInterruptInAnyStageLeavesNoOutputAndNoThreadBehind) {
  test::TempDir tmp;
  const auto tasks = layered_tasks(tmp, 4);
  for (const bool sequential : {false, true}) {
    auto o = options_for(tasks, 2, tmp / "bundle");
    o.sequential = sequential;
    o.pipeline_progress = [](const PipelineProgress& p) {
      if (p.layers_done == 2) request_interrupt();  // what the SIGINT handler does
    };
    EXPECT_THROW(merge_rmm(o), interrupted);
    clear_interrupt();
    for (const auto& name : test::list_dir(tmp.path())) EXPECT_EQ(name.find("bundle"), std::string::npos) << name;
  }
}

TEST(MemoryPlan, SlotsGrowWithTheBudgetUpToTheirCap) {
  ItemMemory item;
  item.staging = 100, item.work = 1000, item.results = 10, item.name = "m", item.layer = 3;
  // Minimum: work + one staging slot + two result slots (one filled, one written).
  EXPECT_THROW(plan_memory(item, 1119, 0, "--memory-budget"), usage_error);
  auto p = plan_memory(item, 1120, 0, "--memory-budget");
  EXPECT_EQ(p.staging_slots, 1);
  EXPECT_EQ(p.result_slots, 2);
  EXPECT_EQ(p.host_bytes, 1120u);
  p = plan_memory(item, 1240, 0, "--memory-budget");  // result slots first, up to four
  EXPECT_EQ(p.result_slots, 4);
  EXPECT_EQ(p.staging_slots, 2);
  EXPECT_LE(p.host_bytes, 1240u);
  p = plan_memory(item, 1u << 30, 0, "--memory-budget");
  EXPECT_EQ(p.staging_slots, 4);
  EXPECT_EQ(p.result_slots, 4);
  // A device: the work and inputs of the modules in flight (one here) and two more modules'
  // inputs there; staging and results on the host.
  item.device_inputs = 50;
  EXPECT_THROW(plan_memory(item, 1u << 30, 1149, "--memory-budget"), usage_error);
  p = plan_memory(item, 130, 1150, "--memory-budget");
  EXPECT_EQ(p.device_bytes, 1150u);
  EXPECT_EQ(p.host_bytes, 130u);
  // Full fine-tunes compressed on the device: the reader's deltas there too, named when short.
  item.device_read_work = 500;
  try {
    plan_memory(item, 130, 1649, "--memory-budget");
    FAIL() << "planned 1650 bytes of device work into 1649";
  } catch (const usage_error& e) {
    EXPECT_NE(std::string(e.what()).find("compressing on the device 500 B"), std::string::npos)
        << e.what();
  }
  p = plan_memory(item, 130, 1650, "--memory-budget");
  EXPECT_EQ(p.device_bytes, 1650u);
}

TEST(MemoryInfo, ByteSizesParseInBinaryAndDecimalUnits) {
  EXPECT_EQ(parse_byte_size("2GiB", "--memory-budget"), 2ull << 30);
  EXPECT_EQ(parse_byte_size("1.5G", "--memory-budget"), 3ull << 29);
  EXPECT_EQ(parse_byte_size("512 MiB", "--memory-budget"), 512ull << 20);
  EXPECT_EQ(parse_byte_size("2GB", "--memory-budget"), 2000000000ull);
  EXPECT_EQ(parse_byte_size("4096", "--memory-budget"), 4096ull);
  for (const char* bad : {"", "GiB", "2 parsecs", "-1G", "0", "1..5G"})
    EXPECT_THROW(parse_byte_size(bad, "--memory-budget"), usage_error) << bad;
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(3ull << 29), "1.50 GiB");
  EXPECT_GT(peak_rss_bytes(), 0u);
  EXPECT_GT(host_memory_available(), 0u);
}

}  // namespace
}  // namespace revmerge
