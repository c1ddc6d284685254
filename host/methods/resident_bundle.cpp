// A bundle resident on a backend: its tensors uploaded once at open, a task rebuilt per call by
// kernels::materialize over the parts methods/materialize_parts.hpp gives (revert's arithmetic).
#include "revmerge/resident.hpp"

#include <array>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "backend/backend.hpp"
#include "backend/registry.hpp"
#include "core/atomic_output.hpp"
#include "methods/materialize_parts.hpp"
#include "methods/resident_on_backend.hpp"
#include "methods/task_adapter.hpp"
#include "revmerge/error.hpp"

namespace revmerge {

using i64 = std::int64_t;

struct ResidentBundle::State {
  std::filesystem::path dir;
  BundleManifest manifest;
  std::shared_ptr<Backend> be;  // shared with the outputs allocate() hands out
  int gpu = -1;
  std::vector<DeviceBuffer> buffers;
  /// Per module and task (m · tasks + t), its two parts over the resident tensors, made at open
  /// so a call only fills in the outputs (no tensor names built or looked up per call).
  std::vector<std::array<kernels::MaterializePart, 2>> prepared;
  /// A call's table of parts on a device: written into pinned memory, uploaded from there on the
  /// caller's stream, read by the launch. Used in turn, so a table is rewritten only once the
  /// call that last used it — kTables calls before — has run (`read`); a serving loop's host
  /// then never waits for the kernel it just queued.
  struct Table {
    DeviceBuffer pinned, device;  // room for two parts per module each
    Event read;                   // the launch that last read it
  };
  static constexpr std::size_t kTables = 3;
  std::array<Table, kTables> tables;
  std::size_t next_table = 0;
  std::vector<kernels::MaterializePart> parts;
  std::vector<i64> all_modules;
  std::uint64_t bytes = 0;
  std::mutex call;
};

ResidentBundle::ResidentBundle(const std::filesystem::path& dir, Device device, int gpu, int threads)
    : ResidentBundle(dir, make_backend(device, {threads, gpu}), gpu) {}

std::unique_ptr<ResidentBundle> open_resident_on(const std::filesystem::path& dir, std::shared_ptr<Backend> backend) {
  return std::unique_ptr<ResidentBundle>(new ResidentBundle(dir, std::move(backend), 0));
}

ResidentBundle::ResidentBundle(const std::filesystem::path& dir, std::shared_ptr<Backend> backend, int gpu)
    : s_(std::make_unique<State>()) {
  const Bundle bundle(dir);
  s_->dir = dir;
  s_->manifest = bundle.manifest();
  s_->be = std::move(backend);
  auto& be = *s_->be;
  if (!be.shares_host_memory()) s_->gpu = gpu;
  const auto& stored = bundle.tensors();
  std::map<std::string, StoredTensor> tensors;
  for (const auto& [file, info] : stored.tensors()) {
    const auto bytes = file->bytes(*info);
    auto buffer = be.allocate(bytes.size());
    be.upload(buffer.data(), bytes.data(), bytes.size(), {});
    tensors[info->name] = {buffer.data(),
                           kernel_type(info->dtype, file->path().string() + ": tensor '" + info->name + "'")};
    s_->bytes += bytes.size();
    s_->buffers.push_back(std::move(buffer));
  }
  const auto lookup = [&](const std::string& name) {
    const auto it = tensors.find(name);
    if (it == tensors.end()) throw format_error(stored.path().string() + ": the bundle has no tensor '" + name + "'");
    return it->second;
  };
  const auto& man = s_->manifest;
  for (const auto& mod : man.modules)
    for (i64 t = 0; t < static_cast<i64>(man.tasks.size()); ++t)
      s_->prepared.push_back(
          materialize_parts(mod, man.represented_tasks(), t, lookup, nullptr, nullptr, kernels::ElemType::f32));
  const auto modules = s_->manifest.modules.size();
  const auto table_bytes = 2 * std::max<std::size_t>(modules, 1) * sizeof(kernels::MaterializePart);
  if (!be.shares_host_memory())  // on the CPU the parts are read where they are
    for (auto& table : s_->tables) {
      table.pinned = be.allocate_staging(table_bytes);
      table.device = be.allocate(table_bytes);
      s_->bytes += table.device.bytes();
    }
  s_->parts.reserve(2 * modules);
  for (std::size_t m = 0; m < modules; ++m) s_->all_modules.push_back(static_cast<i64>(m));
  be.synchronize({});
  stored.check_intact();
}

ResidentBundle::~ResidentBundle() {
  if (!s_) return;
  for (const auto& table : s_->tables)  // nothing freed under a kernel or a copy
    if (table.read.handle()) s_->be->synchronize_event(table.read);
}

const BundleManifest& ResidentBundle::manifest() const noexcept { return s_->manifest; }
std::string ResidentBundle::device_name() const { return s_->be->name(); }
bool ResidentBundle::on_host() const noexcept { return s_->be->shares_host_memory(); }
std::uint64_t ResidentBundle::memory_bytes() const noexcept { return s_->bytes; }
int ResidentBundle::gpu() const noexcept { return s_->gpu; }

std::shared_ptr<void> ResidentBundle::allocate(std::size_t bytes) {
  auto buffer = std::make_shared<DeviceBuffer>(s_->be->allocate(bytes));
  void* data = buffer->data();
  // The deleter holds the buffer and the backend that frees it.
  return {data, [buffer = std::move(buffer), be = s_->be](void*) mutable { buffer.reset(); }};
}

void ResidentBundle::synchronize(void* stream) {
  if (!on_host()) s_->be->synchronize(Stream{stream});
}

void ResidentBundle::materialize(i64 task, std::span<const i64> modules, DType dtype, std::span<void* const> a,
                                 std::span<void* const> b, void* stream, bool fold_scale) {
  const auto& man = s_->manifest;
  const auto tasks = static_cast<i64>(man.tasks.size());
  if (task < 0 || task >= tasks)
    throw usage_error("materialize: task " + std::to_string(task) + " is outside 0 .. " + std::to_string(tasks - 1));
  if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16)
    throw usage_error("materialize: dtype " + std::string(dtype_name(dtype)) + " is not F32, F16 or BF16");
  if (modules.empty()) modules = s_->all_modules;
  if (a.size() != modules.size() || b.size() != modules.size())
    throw usage_error("materialize: " + std::to_string(modules.size()) + " modules but " +
                      std::to_string(a.size()) + " A and " + std::to_string(b.size()) + " B buffers");
  const auto out_type = kernel_type(dtype, "materialize");
  const std::lock_guard<std::mutex> hold(s_->call);
  auto& parts = s_->parts;
  parts.clear();
  for (std::size_t i = 0; i < modules.size(); ++i) {
    const i64 m = modules[i];
    if (m < 0 || m >= static_cast<i64>(man.modules.size()))
      throw usage_error("materialize: module " + std::to_string(m) + " is outside 0 .. " +
                        std::to_string(static_cast<i64>(man.modules.size()) - 1));
    if (!a[i] || !b[i]) throw usage_error("materialize: the buffers of module " + std::to_string(m) + " are null");
    if (parts.size() + 2 > 2 * man.modules.size())
      throw usage_error("materialize: more modules asked for than the bundle has (" +
                        std::to_string(man.modules.size()) + ")");
    auto two = s_->prepared[m * tasks + task];
    two[0].out = a[i], two[1].out = b[i];
    if (!fold_scale) {
      const auto& scales = man.modules[m].task_scales;
      if (scales.empty())
        throw unsupported_error("materialize: " + s_->dir.string() + " does not record the tasks' scales (written "
                                "by an older revmerge; merge again to rebuild B without the scale)");
      two[1].divisor = static_cast<float>(scales[task]);  // as the merge folded it (a float)
    }
    two[0].out_type = two[1].out_type = out_type;
    parts.insert(parts.end(), two.begin(), two.end());
  }
  auto& be = *s_->be;
  auto args = number_parts(parts, parts.data());
  if (be.shares_host_memory()) {
    be.materialize(args, {});
    be.synchronize({});
    return;
  }
  // On the caller's stream: the next table, once the call that last used it has run, filled
  // and uploaded from pinned memory (an upload from pageable memory may wait for the stream),
  // then the one launch.
  const Stream s{stream};
  auto& table = s_->tables[s_->next_table];
  s_->next_table = (s_->next_table + 1) % State::kTables;
  if (table.read.handle()) be.synchronize_event(table.read);
  const auto bytes = parts.size() * sizeof(kernels::MaterializePart);
  std::memcpy(table.pinned.data(), parts.data(), bytes);
  be.upload(table.device.data(), table.pinned.data(), bytes, s);
  args.parts = static_cast<const kernels::MaterializePart*>(table.device.data());
  be.materialize(args, s);
  table.read = be.record_event(s);
}

void ResidentBundle::save_adapter(const std::string& task, const std::filesystem::path& out,
                                  const RevertOptions& options) {
  const auto& man = s_->manifest;
  const auto t = require_task(man, s_->dir, task);
  // The tensors are resident, but the folder they came from is still the user's bundle.
  if (options.overwrite) refuse_replacing_inputs(out, {s_->dir});
  std::vector<LoraModuleData> modules;
  std::vector<void*> a, b;
  std::vector<DeviceBuffer> held;  // device outputs, downloaded once the launch ran
  const auto output = [&](std::vector<float>& host) -> void* {
    if (on_host()) return host.data();
    held.push_back(s_->be->allocate(host.size() * 4));
    return held.back().data();
  };
  modules.reserve(man.modules.size());
  for (const auto& mod : man.modules) {
    modules.push_back({mod.path, mod.rank, mod.in, mod.out, std::vector<float>(static_cast<std::size_t>(mod.rank * mod.in)),
                       std::vector<float>(static_cast<std::size_t>(mod.out * mod.rank))});
    a.push_back(output(modules.back().a));
    b.push_back(output(modules.back().b));
  }
  materialize(t, {}, DType::F32, a, b, nullptr);
  if (!on_host()) {
    for (std::size_t m = 0; m < modules.size(); ++m) {
      s_->be->download(modules[m].a.data(), a[m], modules[m].a.size() * 4, {});
      s_->be->download(modules[m].b.data(), b[m], modules[m].b.size() * 4, {});
    }
    s_->be->synchronize({});
  }
  write_task_adapter(man, s_->dir, t, modules, out, options);
}

}  // namespace revmerge
