// The C interface (include/revmerge/revmerge.h) over the C++ API: every call catches what the
// C++ side throws and turns it into a status and a per-thread message.
#include "revmerge/revmerge.h"

#include <algorithm>
#include <exception>
#include <filesystem>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "revmerge/bundle.hpp"
#include "revmerge/error.hpp"
#include "revmerge/resident.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/store.hpp"
#include "revmerge/version.hpp"

struct revmerge_bundle {
  revmerge::Bundle bundle;
};

struct revmerge_device_bundle {
  revmerge::ResidentBundle resident;
};

namespace {

thread_local std::string last_error;

revmerge_status fail(revmerge_status status, std::string message) {
  last_error = std::move(message);
  return status;
}

// The status of the exception being handled, its message kept for revmerge_last_error.
revmerge_status current_failure() {
  try {
    throw;
  } catch (const revmerge::usage_error& e) {
    return fail(REVMERGE_USAGE_ERROR, e.what());
  } catch (const revmerge::io_error& e) {
    return fail(REVMERGE_IO_ERROR, e.what());
  } catch (const revmerge::format_error& e) {
    return fail(REVMERGE_FORMAT_ERROR, e.what());
  } catch (const revmerge::shape_error& e) {
    return fail(REVMERGE_SHAPE_ERROR, e.what());
  } catch (const revmerge::unsupported_error& e) {
    return fail(REVMERGE_UNSUPPORTED, e.what());
  } catch (const revmerge::device_error& e) {
    return fail(REVMERGE_DEVICE_ERROR, e.what());
  } catch (const revmerge::solver_error& e) {
    return fail(REVMERGE_SOLVER_ERROR, e.what());
  } catch (const revmerge::interrupted& e) {
    return fail(REVMERGE_INTERRUPTED, e.what());
  } catch (const std::bad_alloc&) {
    return fail(REVMERGE_INTERNAL_ERROR, "out of memory");
  } catch (const std::exception& e) {
    return fail(REVMERGE_INTERNAL_ERROR, e.what());
  } catch (...) {
    return fail(REVMERGE_INTERNAL_ERROR, "unknown failure");
  }
}

template <class F>
revmerge_status guarded(F&& body) {
  try {
    body();
    return REVMERGE_OK;
  } catch (...) {
    return current_failure();
  }
}

revmerge::Device device_of(int d) {
  switch (d) {
    case REVMERGE_DEVICE_CPU:
      return revmerge::Device::cpu;
    case REVMERGE_DEVICE_CUDA:
      return revmerge::Device::cuda;
    case REVMERGE_DEVICE_AUTO:
      return revmerge::Device::automatic;
    default:
      throw revmerge::usage_error("device: " + std::to_string(d) +
                                  " is not REVMERGE_DEVICE_AUTO, _CPU or _CUDA");
  }
}

void require(bool ok, const std::string& message) {
  if (!ok) throw revmerge::usage_error(message);
}

// A module or task index of the bundle, checked.
std::size_t index_in(int64_t i, std::size_t count, const char* what) {
  require(i >= 0 && static_cast<std::size_t>(i) < count,
          std::string(what) + " " + std::to_string(i) + " is outside 0 .. " +
              std::to_string(static_cast<long long>(count) - 1));
  return static_cast<std::size_t>(i);
}

// Module `module`'s identity and shape, for both bundle handles.
void module_info(const revmerge::BundleManifest& man, int64_t module, revmerge_module_info* info) {
  require(info != nullptr, "module info must not be null");
  const auto& m = man.modules[index_in(module, man.modules.size(), "module")];
  *info = {m.path.c_str(), m.layer, m.in, m.out, m.rank};
}

revmerge::DType dtype_of(int d) {
  switch (d) {
    case REVMERGE_DTYPE_F32: return revmerge::DType::F32;
    case REVMERGE_DTYPE_F16: return revmerge::DType::F16;
    case REVMERGE_DTYPE_BF16: return revmerge::DType::BF16;
    default:
      throw revmerge::usage_error("dtype: " + std::to_string(d) +
                                  " is not REVMERGE_DTYPE_F32, _F16 or _BF16");
  }
}

// The tasks of a merge call: each adapter named by `names`, or by its folder.
std::vector<revmerge::TaskSource> task_list(const char* call, const char* const* adapters,
                                            const char* const* names, int64_t n, const char* out_dir) {
  require(adapters && out_dir && n >= 0, std::string(call) + ": adapters and out_dir must not be null");
  std::vector<revmerge::TaskSource> tasks;
  for (int64_t t = 0; t < n; ++t) {
    require(adapters[t] && (!names || names[t]),
            std::string(call) + ": adapter or name " + std::to_string(t) + " is null");
    std::filesystem::path dir(adapters[t]);
    if (dir.filename().empty()) dir = dir.parent_path();  // "adapters/qa/"
    tasks.push_back({names ? names[t] : dir.filename().string(), adapters[t]});
  }
  return tasks;
}

}  // namespace

extern "C" {

const char* revmerge_version(void) { return REVMERGE_VERSION_STRING; }

const char* revmerge_last_error(void) { return last_error.c_str(); }

revmerge_status revmerge_merge_rmm(const char* const* adapters, const char* const* names, int64_t n,
                                   int64_t basis, const char* out_dir, int overwrite, int device) {
  return guarded([&] {
    revmerge::RmmMergeOptions o;
    o.tasks = task_list("revmerge_merge_rmm", adapters, names, n, out_dir);
    o.basis = basis;
    o.out = out_dir;
    o.overwrite = overwrite != 0;
    o.device = device_of(device);
    revmerge::merge_rmm(o);
  });
}

revmerge_status revmerge_merge_auto(const char* const* adapters, const char* const* names,
                                    int64_t n, double storage, int truncations_only,
                                    const char* out_dir, int overwrite, int device) {
  return guarded([&] {
    revmerge::StoreMergeOptions o;
    o.tasks = task_list("revmerge_merge_auto", adapters, names, n, out_dir);
    o.method = truncations_only ? revmerge::StoreMethod::rank : revmerge::StoreMethod::automatic;
    o.storage.fraction = storage;
    o.out = out_dir;
    o.overwrite = overwrite != 0;
    o.device = device_of(device);
    revmerge::merge_store(o);
  });
}

revmerge_status revmerge_bundle_open(const char* dir, revmerge_bundle** bundle) {
  return guarded([&] {
    require(dir && bundle, "revmerge_bundle_open: dir and bundle must not be null");
    *bundle = nullptr;
    *bundle = new revmerge_bundle{revmerge::Bundle(dir)};
  });
}

void revmerge_bundle_close(revmerge_bundle* bundle) { delete bundle; }

int64_t revmerge_bundle_task_count(const revmerge_bundle* bundle) {
  return bundle ? static_cast<int64_t>(bundle->bundle.manifest().tasks.size()) : 0;
}

const char* revmerge_bundle_task_name(const revmerge_bundle* bundle, int64_t task) {
  if (!bundle || task < 0 || task >= revmerge_bundle_task_count(bundle)) return nullptr;
  return bundle->bundle.manifest().tasks[static_cast<std::size_t>(task)].name.c_str();
}

int64_t revmerge_bundle_task_index(const revmerge_bundle* bundle, const char* name) {
  return bundle && name ? bundle->bundle.manifest().task_index(name) : -1;
}

int64_t revmerge_bundle_module_count(const revmerge_bundle* bundle) {
  return bundle ? static_cast<int64_t>(bundle->bundle.manifest().modules.size()) : 0;
}

revmerge_status revmerge_bundle_module(const revmerge_bundle* bundle, int64_t module,
                                       revmerge_module_info* info) {
  return guarded([&] {
    require(bundle != nullptr, "revmerge_bundle_module: bundle must not be null");
    module_info(bundle->bundle.manifest(), module, info);
  });
}

revmerge_status revmerge_revert_module(const revmerge_bundle* bundle, int64_t module, int64_t task,
                                       int device, float* a, float* b) {
  return guarded([&] {
    require(bundle && a && b, "revmerge_revert_module: bundle, a and b must not be null");
    const auto& man = bundle->bundle.manifest();
    const auto mi = index_in(module, man.modules.size(), "module");
    index_in(task, man.tasks.size(), "task");
    const auto r = revmerge::revert_module(bundle->bundle, mi, task, device_of(device));
    std::copy(r.a.begin(), r.a.end(), a);
    std::copy(r.b.begin(), r.b.end(), b);
  });
}

revmerge_status revmerge_revert_task(const revmerge_bundle* bundle, const char* task,
                                     const char* out_dir, int overwrite, int device) {
  return guarded([&] {
    require(bundle && task && out_dir,
            "revmerge_revert_task: bundle, task and out_dir must not be null");
    revmerge::RevertOptions options;
    options.overwrite = overwrite != 0;
    options.device = device_of(device);
    revmerge::revert_task(bundle->bundle, task, out_dir, options);
  });
}

revmerge_status revmerge_device_bundle_open(const char* dir, int device, revmerge_device_bundle** bundle) {
  return guarded([&] {
    require(dir && bundle, "revmerge_device_bundle_open: dir and bundle must not be null");
    *bundle = nullptr;
    *bundle = new revmerge_device_bundle{revmerge::ResidentBundle(dir, device_of(device))};
  });
}

void revmerge_device_bundle_close(revmerge_device_bundle* bundle) { delete bundle; }

int64_t revmerge_device_bundle_task_count(const revmerge_device_bundle* bundle) {
  return bundle ? static_cast<int64_t>(bundle->resident.manifest().tasks.size()) : 0;
}

int64_t revmerge_device_bundle_task_index(const revmerge_device_bundle* bundle, const char* name) {
  return bundle && name ? bundle->resident.manifest().task_index(name) : -1;
}

int64_t revmerge_device_bundle_module_count(const revmerge_device_bundle* bundle) {
  return bundle ? static_cast<int64_t>(bundle->resident.manifest().modules.size()) : 0;
}

revmerge_status revmerge_device_bundle_module(const revmerge_device_bundle* bundle, int64_t module,
                                              revmerge_module_info* info) {
  return guarded([&] {
    require(bundle != nullptr, "revmerge_device_bundle_module: bundle must not be null");
    module_info(bundle->resident.manifest(), module, info);
  });
}

uint64_t revmerge_device_bundle_memory(const revmerge_device_bundle* bundle) {
  return bundle ? bundle->resident.memory_bytes() : 0;
}

int revmerge_device_bundle_on_host(const revmerge_device_bundle* bundle) {
  return bundle && bundle->resident.on_host() ? 1 : 0;
}

revmerge_status revmerge_materialize(revmerge_device_bundle* bundle, int64_t task, const int64_t* modules,
                                     int64_t count, int dtype, int fold_scale, void* const* a,
                                     void* const* b, void* stream) {
  return guarded([&] {
    require(bundle && a && b, "revmerge_materialize: bundle, a and b must not be null");
    require(count >= 0 && (modules || count == 0), "revmerge_materialize: modules is null but count is " +
                                                       std::to_string(count));
    const auto all = static_cast<int64_t>(bundle->resident.manifest().modules.size());
    const auto n = count > 0 ? count : all;
    bundle->resident.materialize(task, std::span<const int64_t>(modules, static_cast<std::size_t>(count)),
                                 dtype_of(dtype),
                                 std::span<void* const>(a, static_cast<std::size_t>(n)),
                                 std::span<void* const>(b, static_cast<std::size_t>(n)), stream,
                                 fold_scale != 0);
  });
}

revmerge_status revmerge_device_bundle_save(revmerge_device_bundle* bundle, const char* task, const char* out_dir,
                                            int overwrite) {
  return guarded([&] {
    require(bundle && task && out_dir, "revmerge_device_bundle_save: bundle, task and out_dir must not be null");
    revmerge::RevertOptions options;
    options.overwrite = overwrite != 0;
    bundle->resident.save_adapter(task, out_dir, options);
  });
}

}  // extern "C"
