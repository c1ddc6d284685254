// `revmerge bench`: an RMM merge end to end through the streamed pipeline, reported against
// the floors measured in the same run — the time to only read the same input bytes, and to only
// write as many bytes as the bundle the way outputs are written.
#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "core/atomic_output.hpp"
#include "core/memory_info.hpp"
#include "backend/registry.hpp"
#include "merge_config.hpp"
#include "progress.hpp"
#include "revmerge/error.hpp"
#include "revmerge/mapped_file.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/rmm.hpp"
#include "text_format.hpp"
#include "command_line.hpp"

namespace revmerge::cli {
namespace {

namespace fs = std::filesystem;

struct BenchArgs {
  std::vector<std::string> inputs;
  std::int64_t basis = 0;
  std::string out, dtype, device = "auto", memory_budget;
  int threads = 0, gpu = 0;
  bool json = false, quiet = false, keep = false, compare_sequential = false;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A floor: the seconds some bytes took to move once, and how many.
struct Floor {
  double seconds = 0;
  std::uint64_t bytes = 0;
  double gb_per_s() const { return static_cast<double>(bytes) / 1e9 / seconds; }
};

// The floor: every adapter's weights file read once into a small buffer (pread, no conversion,
// nothing kept) — what any merge of these files must at least spend.
Floor read_floor(const std::vector<TaskSource>& tasks) {
  std::vector<char> buf(8u << 20);
  std::uint64_t bytes = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& t : tasks) {
    const auto path = t.adapter / kAdapterWeightsName;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw io_error(path.string() + ": cannot open: " + std::strerror(errno));
    for (;;) {
      const auto got = ::read(fd, buf.data(), buf.size());
      if (got < 0) {
        const int e = errno;
        ::close(fd);
        throw io_error(path.string() + ": read failed: " + std::strerror(e));
      }
      if (got == 0) break;
      bytes += static_cast<std::uint64_t>(got);
    }
    ::close(fd);
  }
  return {seconds_since(t0), bytes};
}

// The write floor: as many bytes as the bundle holds, written once the way outputs are
// (AtomicFile: sized, then 8 MiB blocks around the page cache where the file system allows, then
// fsync and rename) into a scratch file in the output folder, removed after. Beside the read
// floor: the pipeline overlaps reading and writing, so the larger of the two bounds it.
Floor write_floor(const fs::path& folder, std::uint64_t bytes) {
  constexpr std::size_t kBlock = std::size_t{8} << 20;
  std::unique_ptr<std::byte[], decltype(&std::free)> block(
      static_cast<std::byte*>(std::aligned_alloc(AtomicFile::kDirectAlign, kBlock)), &std::free);
  if (!block) throw std::bad_alloc();
  for (std::size_t i = 0; i < kBlock; ++i) block[i] = static_cast<std::byte>(i * 131 + 7);
  const auto path = folder / "write-floor.bench";
  const auto t0 = std::chrono::steady_clock::now();
  {
    AtomicFile file(path, true);
    file.resize(bytes);
    for (std::uint64_t at = 0; at < bytes; at += kBlock)
      file.write_at(at, block.get(), static_cast<std::size_t>(std::min<std::uint64_t>(kBlock, bytes - at)));
    file.commit();
  }
  const double seconds = seconds_since(t0);
  std::error_code ec;
  fs::remove(path, ec);
  return {seconds, bytes};
}

bool same_file(const fs::path& a, const fs::path& b) {
  MappedFile x(a), y(b);
  return x.bytes().size() == y.bytes().size() &&
         std::equal(x.bytes().begin(), x.bytes().end(), y.bytes().begin());
}

nlohmann::ordered_json stats_json(const PipelineStats& s) {
  return {{"pipelined", s.pipelined},
          {"seconds", s.seconds},
          {"setup_seconds", s.setup_seconds},
          {"pipeline_seconds", s.pipeline_seconds},
          {"finish_seconds", s.finish_seconds},
          {"stage_seconds",
           {{"read", s.read_seconds}, {"upload", s.upload_seconds}, {"compute", s.compute_seconds},
            {"write", s.write_seconds}}},
          {"stage_wait_seconds",
           {{"read", s.read_wait_seconds}, {"upload", s.upload_wait_seconds},
            {"compute", s.compute_wait_seconds}, {"write", s.write_wait_seconds}}},
          {"bytes_read", s.bytes_read},
          {"bytes_written", s.bytes_written},
          {"host_budget", s.host_budget},
          {"device_budget", s.device_budget},
          {"planned_host_bytes", s.planned_host_bytes},
          {"planned_device_bytes", s.planned_device_bytes},
          {"staging_slots", s.staging_slots},
          {"backend_peak_bytes", s.backend_peak_bytes},
          {"modules", s.modules},
          {"layers", s.layers}};
}

// The input read once, and the output written once.
struct Floors {
  Floor read, write;
  double larger() const { return std::max(read.seconds, write.seconds); }
};

void print_report(const RmmMergeOptions& o, const BundleManifest& manifest, const PipelineStats& stats,
                  const PipelineStats& seq, std::optional<bool> identical, const Floors& floors,
                  std::uint64_t rss);

// The slowest stage's busy seconds: what perfect overlap would take.
double slowest_stage(const PipelineStats& s) {
  return std::max({s.read_seconds, s.upload_seconds, s.compute_seconds, s.write_seconds});
}

void run_bench(const BenchArgs& args) {
  RmmMergeOptions o;
  for (const auto& a : args.inputs) o.tasks.push_back(task_from_argument(a));
  o.basis = args.basis;
  if (!args.dtype.empty()) o.dtype = parse_float_dtype_option(args.dtype, "--dtype");
  o.threads = args.threads;
  o.device = parse_device_option(args.device);
  o.gpu = args.gpu;
  if (!args.memory_budget.empty()) o.memory_budget = parse_byte_size(args.memory_budget, "--memory-budget");
  // The bundle goes to --out, or to a scratch folder removed afterwards.
  const bool scratch = args.out.empty();
  const fs::path out = scratch ? fs::temp_directory_path() / fmt::format("revmerge-bench-{}", ::getpid())
                               : fs::path(args.out);
  o.out = out;
  o.overwrite = scratch || args.keep;  // --force (kept in `keep`) for a named --out
  struct Cleanup {
    fs::path dir;
    bool on;
    ~Cleanup() {
      std::error_code ec;
      if (on) fs::remove_all(dir, ec), fs::remove_all(dir.string() + ".sequential", ec);
    }
  } cleanup{out, scratch};

  Floors floors{read_floor(o.tasks), {}};
  PipelineStats stats;
  o.stats = &stats;
  o.pipeline_progress = pipeline_progress(args.quiet || args.json, "bench");
  const auto manifest = merge_rmm(o);
  const auto rss = peak_rss_bytes();
  floors.write = write_floor(out, stats.bytes_written);

  PipelineStats seq;
  std::optional<bool> identical;
  if (args.compare_sequential) {
    auto s = o;
    s.out = out.string() + ".sequential";
    s.overwrite = true;
    s.sequential = true;
    s.stats = &seq;
    s.pipeline_progress = pipeline_progress(args.quiet || args.json, "bench (sequential)");
    merge_rmm(s);
    identical = same_file(out / kBundleTensorsName, s.out / kBundleTensorsName);
    std::error_code ec;
    fs::remove_all(s.out, ec);
  }

  const double slowest = slowest_stage(stats);
  const double gb = static_cast<double>(stats.bytes_read) / 1e9;
  if (args.json) {
    nlohmann::ordered_json j;
    j["backend"] = manifest.backend;
    j["tasks"] = o.tasks.size();
    j["basis"] = o.basis;
    j["pipeline"] = stats_json(stats);
    j["slowest_stage_seconds"] = slowest;
    j["end_to_end_over_slowest_stage"] = stats.seconds / slowest;
    j["pipeline_over_slowest_stage"] = stats.pipeline_seconds / slowest;
    j["gb_per_s"] = gb / stats.seconds;
    j["floor"] = {{"what", "read the same adapter files once (read(2), 8 MiB buffer)"},
                  {"seconds", floors.read.seconds},
                  {"bytes", floors.read.bytes},
                  {"gb_per_s", floors.read.gb_per_s()}};
    j["end_to_end_over_floor"] = stats.seconds / floors.read.seconds;
    j["write_floor"] = {{"what", "write as many bytes as the bundle once, as outputs are written "
                                 "(direct I/O where allowed, 8 MiB blocks, fsync)"},
                        {"seconds", floors.write.seconds},
                        {"bytes", floors.write.bytes},
                        {"gb_per_s", floors.write.gb_per_s()}};
    j["end_to_end_over_larger_floor"] = stats.seconds / floors.larger();
    j["peak_rss_bytes"] = rss;
    if (args.compare_sequential) {
      j["sequential"] = stats_json(seq);
      j["pipelined_identical_to_sequential"] = *identical;
    }
    report_out() << j.dump(1) << "\n";
  } else if (!args.quiet) {
    print_report(o, manifest, stats, seq, identical, floors, rss);
  }
  if (identical && !*identical)
    throw solver_error("the pipelined and the sequential bundles differ: please report this");
}

void print_report(const RmmMergeOptions& o, const BundleManifest& manifest, const PipelineStats& stats,
                  const PipelineStats& seq, std::optional<bool> identical, const Floors& floors,
                  std::uint64_t rss) {
  const double slowest = slowest_stage(stats);
  const double gb = static_cast<double>(stats.bytes_read) / 1e9;
  report_out() << fmt::format("revmerge bench: RMM of {} adapters, {} modules in {} layers, P = {}, {}\n",
                           o.tasks.size(), stats.modules, stats.layers, o.basis, manifest.backend);
  report_out() << fmt::format("memory plan: budget {} host{}, {} staging slots, planned {} host{}\n",
                           format_bytes(stats.host_budget),
                           stats.device_budget ? " / " + format_bytes(stats.device_budget) + " device" : "",
                           stats.staging_slots, format_bytes(stats.planned_host_bytes),
                           stats.device_budget ? " / " + format_bytes(stats.planned_device_bytes) + " device" : "");
  report_out() << fmt::format("\n{:<26} {:>10} {:>10} {:>10}\n", "stage (busy time)", "seconds",
                           "GB/s in", "waiting");
  struct Row {
    const char* name;
    double busy, wait;
  };
  for (const auto& [name, sec, wait] : {Row{"read", stats.read_seconds, stats.read_wait_seconds},
                                        Row{"upload", stats.upload_seconds, stats.upload_wait_seconds},
                                        Row{"compute", stats.compute_seconds, stats.compute_wait_seconds},
                                        Row{"write", stats.write_seconds, stats.write_wait_seconds}})
    report_out() << fmt::format("{:<26} {:>10.3f} {:>10} {:>10.3f}\n", name, sec,
                             sec > 0 ? fmt::format("{:.2f}", gb / sec) : "-", wait);
  // The stages overlap inside the pipeline; setup and finish happen once per merge, before
  // and after it (a GPU context, the final fsync), so both ratios are shown.
  report_out() << fmt::format("{:<26} {:>10.3f} {:>10.2f}   ({:.2f} × the slowest stage)\n",
                           "pipeline (stages overlap)", stats.pipeline_seconds,
                           gb / stats.pipeline_seconds, stats.pipeline_seconds / slowest);
  report_out() << fmt::format("{:<26} {:>10.3f}\n", "setup (open, backend, plan)", stats.setup_seconds);
  report_out() << fmt::format("{:<26} {:>10.3f}\n", "finish (fsync, rename)", stats.finish_seconds);
  report_out() << fmt::format("{:<26} {:>10.3f} {:>10.2f}   ({:.2f} × the slowest stage)\n",
                           "end to end", stats.seconds, gb / stats.seconds, stats.seconds / slowest);
  report_out() << fmt::format("{:<26} {:>10.3f} {:>10.2f}   (end to end is {:.1f} × this floor)\n",
                           "floor: read the same bytes", floors.read.seconds, floors.read.gb_per_s(),
                           stats.seconds / floors.read.seconds);
  report_out() << fmt::format("{:<26} {:>10.3f} {:>10.2f}   (GB/s out; end to end is {:.1f} × the larger floor)\n",
                           "floor: write the output", floors.write.seconds, floors.write.gb_per_s(),
                           stats.seconds / floors.larger());
  report_out() << fmt::format("\nbytes read {:.3f} GB, written {:.3f} GB; peak RSS {}; backend pool peak {}\n",
                           gb, static_cast<double>(stats.bytes_written) / 1e9, format_bytes(rss),
                           format_bytes(stats.backend_peak_bytes));
  if (identical)
    report_out() << fmt::format("sequential (one module at a time, one thread): {:.3f} s, {:.2f}× the "
                             "pipelined time; outputs {}\n",
                             seq.seconds, seq.seconds / stats.seconds,
                             *identical ? "bitwise identical" : "DIFFER");
}

}  // namespace

void add_bench_command(CLI::App& app) {
  static BenchArgs args;
  args = {};  // each command line starts from the defaults (the Python package runs many)
  auto* cmd = app.add_subcommand(
      "bench", "Time an RMM merge end to end through the streamed pipeline: stages, GB/s, peak "
               "memory, against the time to only read the same files and to only write as many bytes as "
               "the bundle (both measured in the same run)");
  cmd->add_option("ADAPTER", args.inputs, "PEFT adapter folders (bench/ makes LLM-shaped ones)")
      ->required();
  cmd->add_option("--basis,-p", args.basis, "RMM basis size P, 1 .. n − 1")->required();
  cmd->add_option("--out,-o", args.out, "keep the bundle here (default: a scratch folder, removed)");
  cmd->add_option("--dtype", args.dtype, "stored dtype: f32, f16, bf16 (default: the inputs')");
  cmd->add_option("--memory-budget", args.memory_budget, "as for merge, e.g. 1.5GiB");
  cmd->add_option("--threads", args.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", args.device, "cpu, cuda or auto");
  cmd->add_option("--gpu", args.gpu, "CUDA device index")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--compare-sequential", args.compare_sequential,
                "also run one module at a time without overlap; report its time and whether the "
                "outputs are bitwise identical");
  cmd->add_flag("--force", args.keep, "replace an existing --out");
  cmd->add_flag("--json", args.json, "print the report as JSON");
  cmd->add_flag("--quiet,-q", args.quiet, "no progress, no report");
  cmd->callback([] { run_bench(args); });
}

}  // namespace revmerge::cli
