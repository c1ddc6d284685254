// Bringing one task of a bundle into memory: materialised from a resident bundle
// (revmerge/resident.hpp) into preallocated buffers, against the peer a serving stack runs
// today — loading the task's own PEFT adapter with Python's safetensors from the page cache — in
// the same run, beside the floor (the bytes the materialisation reads and writes ÷ the host's
// memcpy bandwidth, or the GPU's device-to-device copy bandwidth, measured now). Medians of
// --repeats runs, each call waited for (a task switch); then as many calls queued back to back
// with one wait (on a GPU a call returns once queued); then the largest module alone, the same
// two ways, beside its own bytes' time.
//
//   revmerge_bench_materialize --bundle B --task task-3 --adapter /tmp/b7/task-3 --dtype bf16 \
//       [--device cuda --tiles-per-block 1,4,16]
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "backend/registry.hpp"
#include "revmerge/dtype.hpp"
#include "revmerge/resident.hpp"
#include "timing.hpp"

using i64 = std::int64_t;
using revmerge::bench::memcpy_gbps;
using revmerge::bench::seconds_since;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The device's copy bandwidth measured now (read + write of 1 GiB, device to device).
double device_copy_gbps(revmerge::Backend& be) {
  const std::size_t bytes = std::size_t(1) << 30;
  auto x = be.allocate(bytes), y = be.allocate(bytes);
  be.fill(x.data(), 0, bytes, {});
  be.copy(y.data(), x.data(), bytes, {});
  be.synchronize({});
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 4; ++i) be.copy(y.data(), x.data(), bytes, {});
  be.synchronize({});
  return 4.0 * 2 * double(bytes) / seconds_since(t0) / 1e9;
}

// The peer's median seconds: safetensors' load_file of the adapter in Python (torch tensors),
// page cache warm; with `touch`, every tensor then copied once (load_file maps the file, so its
// bytes are only read when used — by a copy to a device or to a server's own buffers).
double peer_seconds(const std::string& adapter, int repeats, bool touch) {
  const auto cmd = fmt::format(
      "python3 -c \"import time,statistics; from safetensors.torch import load_file; "
      "f='{}/adapter_model.safetensors'; load_file(f); t=[]\n"
      "for _ in range({}):\n s=time.perf_counter(); d=load_file(f); c=[v.clone() for v in d.values()] if {} else 0; "
      "t.append(time.perf_counter()-s)\n"
      "print(statistics.median(t))\" 2>/dev/null",
      adapter, repeats, touch ? "True" : "False");
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  double s = -1;
  if (std::fscanf(p, "%lf", &s) != 1) s = -1;
  pclose(p);
  return s;
}

}  // namespace

int run(int argc, char** argv) {
  CLI::App app{"One task materialised from a resident bundle against loading its PEFT adapter"};
  std::string bundle, task, adapter, dtype_name = "bf16", device = "cpu";
  int repeats = 7;
  app.add_option("--bundle", bundle, "bundle folder")->required();
  app.add_option("--task", task, "task name")->required();
  app.add_option("--adapter", adapter, "the task's own PEFT adapter folder (the peer loads it)");
  app.add_option("--dtype", dtype_name, "f32, f16 or bf16");
  app.add_option("--device", device, "cpu or cuda (buffers on the device)");
  app.add_option("--repeats", repeats, "timed runs");
  std::vector<int> tiles_per_block;
  app.add_option("--tiles-per-block", tiles_per_block,
                 "also time the task with a GPU block taking this many tiles in turn (each value in the same "
                 "run, by REVMERGE_MATERIALIZE_TILES_PER_BLOCK; 0: the backend's choice)")
      ->delimiter(',')
      ->check(CLI::Range(0, 1024));
  CLI11_PARSE(app, argc, argv);
  const auto dtype = revmerge::parse_float_dtype_option(dtype_name, "--dtype");
  const auto t_open = std::chrono::steady_clock::now();
  revmerge::ResidentBundle rb(bundle, device == "cuda" ? revmerge::Device::cuda : revmerge::Device::cpu);
  const double open_s = seconds_since(t_open);
  const auto& man = rb.manifest();
  const i64 t = man.task_index(task);
  if (t < 0) {
    fmt::print(stderr, "no task '{}' in {}\n", task, bundle);
    return 2;
  }
  // Output buffers where the bundle lives: host memory, or the GPU's (from a backend of its own
  // on the same device, as a serving stack's allocator would give them).
  std::unique_ptr<revmerge::Backend> gpu;
  if (!rb.on_host()) gpu = revmerge::make_backend(revmerge::Device::cuda, {});
  std::vector<std::vector<unsigned char>> a, b;
  std::vector<revmerge::DeviceBuffer> held;
  std::vector<void*> pa, pb;
  double numbers = 0;
  const auto buffer = [&](std::vector<std::vector<unsigned char>>& host, std::size_t bytes) -> void* {
    if (gpu) {
      held.push_back(gpu->allocate(bytes));
      return held.back().data();
    }
    host.emplace_back(bytes);
    return host.back().data();
  };
  for (const auto& mod : man.modules) {
    pa.push_back(buffer(a, static_cast<std::size_t>(mod.rank * mod.in) * revmerge::dtype_size(dtype)));
    pb.push_back(buffer(b, static_cast<std::size_t>(mod.out * mod.rank) * revmerge::dtype_size(dtype)));
    numbers += double(mod.rank) * double(mod.in + mod.out);
  }
  rb.materialize(t, {}, dtype, pa, pb);  // first touch of the outputs
  rb.synchronize();
  // `calls` calls each waited for (a task switch: the call and its work done; on a GPU a call
  // returns once queued), their median; then as many queued back to back with one wait at the
  // end, a call's share (what a loop over tasks sustains).
  struct Timed {
    double waited, queued;
  };
  const auto timed = [&](std::span<const i64> modules, const std::vector<void*>& a_out,
                         const std::vector<void*>& b_out, int calls) {
    std::vector<double> times;
    for (int i = 0; i < calls; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      rb.materialize(t, modules, dtype, a_out, b_out);
      rb.synchronize();
      times.push_back(seconds_since(t0));
    }
    const auto t_queued = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) rb.materialize(t, modules, dtype, a_out, b_out);
    rb.synchronize();
    return Timed{median(times), seconds_since(t_queued) / calls};
  };
  const auto [ours, per_queued] = timed({}, pa, pb, repeats);
  const double moved = double(rb.memory_bytes()) + numbers * double(revmerge::dtype_size(dtype));
  const double floor = moved / ((gpu ? device_copy_gbps(*gpu) : memcpy_gbps()) * 1e9);
  fmt::print("bundle {}: {} modules, {:.1f} M numbers per task, {:.1f} MB resident on {} (opened in {:.2f} s)\n",
             bundle, man.modules.size(), numbers / 1e6, double(rb.memory_bytes()) / 1e6, rb.device_name(), open_s);
  fmt::print("materialise task '{}' as {}: median {:.3f} ms over {} runs; floor (resident + output bytes ÷ copy bandwidth) {:.3f} ms ({:.1f}× the floor)\n",
             task, dtype_name, ours * 1e3, repeats, floor * 1e3, ours / floor);
  fmt::print("{} calls queued back to back, one wait: {:.3f} ms a call ({:.1f}× the floor)\n", repeats,
             per_queued * 1e3, per_queued / floor);
  // The GPU kernel's tiles a block, one count against another in this run (the same calls).
  for (const int per_block : tiles_per_block) {
    if (per_block > 0) setenv("REVMERGE_MATERIALIZE_TILES_PER_BLOCK", std::to_string(per_block).c_str(), 1);
    else unsetenv("REVMERGE_MATERIALIZE_TILES_PER_BLOCK");
    const auto each = timed({}, pa, pb, repeats);
    fmt::print("  tiles a block {}: median {:.3f} ms ({:.1f}× the floor), queued {:.3f} ms a call\n",
               per_block > 0 ? std::to_string(per_block) : std::string("(the backend's choice)"), each.waited * 1e3,
               each.waited / floor, each.queued * 1e3);
  }
  unsetenv("REVMERGE_MATERIALIZE_TILES_PER_BLOCK");
  // One module alone (the largest: a serving stack swapping one layer's adapter), each call
  // waited for, then queued: a call's fixed cost (its parts table uploaded, one launch) beside
  // the module's own bytes over the same bandwidth.
  std::size_t big = 0;
  const auto numbers_of = [&](const revmerge::BundleModule& mod) { return double(mod.rank) * double(mod.in + mod.out); };
  for (std::size_t m = 0; m < man.modules.size(); ++m)
    if (numbers_of(man.modules[m]) > numbers_of(man.modules[big])) big = m;
  const auto& bm = man.modules[big];
  const std::vector<i64> one{static_cast<i64>(big)};
  const std::vector<void*> one_a{pa[big]}, one_b{pb[big]};
  const int module_calls = std::max(repeats, 21);  // a call is microseconds on a GPU: more of them
  const auto module = timed(one, one_a, one_b, module_calls);
  double raw = 0;
  for (const auto rk : bm.task_ranks) raw += double(rk) * double(bm.in + bm.out);
  const double module_moved = bm.storage_ratio * raw * double(revmerge::dtype_size(man.dtype)) +
                              numbers_of(bm) * double(revmerge::dtype_size(dtype));
  const double module_floor = module_moved / (moved / floor);
  fmt::print("one module ({}, {:.2f} M numbers): median {:.1f} µs a call waited for, {:.1f} µs queued back to "
             "back; its bytes over the same bandwidth {:.1f} µs\n",
             bm.path, numbers_of(bm) / 1e6, module.waited * 1e6, module.queued * 1e6, module_floor * 1e6);
  if (!adapter.empty()) {
    const double mapped = peer_seconds(adapter, repeats, false), copied = peer_seconds(adapter, repeats, true);
    if (mapped > 0 && copied > 0)
      fmt::print("peer: safetensors (torch) load_file of {} from the page cache: median {:.1f} ms mapped, "
                 "{:.1f} ms with every tensor copied once — materialise takes {:.2f}× the copied load\n",
                 adapter, mapped * 1e3, copied * 1e3, ours / copied);
    else
      fmt::print("peer: not run (python3 with safetensors and torch not found)\n");
  }
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "revmerge_bench_materialize: {}\n", e.what());
    return 1;
  }
}
