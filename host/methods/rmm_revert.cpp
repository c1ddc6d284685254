// revmerge revert: rebuild a task's factors from a bundle — for an rmm module x̂_i = μ + V c_i at
// every position; for a rank module, or a task added later, the task's own truncated factors,
// zero-padded to the module's rank; for the shared bases, the task's cores times the bases — all
// through kernels::materialize on the backend (methods/materialize_parts.hpp).
#include <memory>

#include "backend/backend.hpp"
#include "backend/registry.hpp"
#include "core/atomic_output.hpp"
#include "core/interrupt.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/hf_model.hpp"
#include "methods/model_output.hpp"
#include "methods/recipe.hpp"
#include "methods/materialize_parts.hpp"
#include "methods/task_adapter.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Task `task` of module `module_index` rebuilt on `be` (kernels::materialize, as the C interface
// and a resident bundle rebuild it): the module's stored tensors read where they are mapped on a
// backend that shares host memory, uploaded otherwise.
RevertedModule revert_with(Backend& be, const Bundle& bundle, std::size_t module_index, i64 task) {
  const auto& man = bundle.manifest();
  const auto& mod = man.modules.at(module_index);
  const auto& file = bundle.tensors();
  const bool host = be.shares_host_memory();
  RevertedModule out;
  out.a.resize(static_cast<std::size_t>(mod.rank * mod.in));
  out.b.resize(static_cast<std::size_t>(mod.out * mod.rank));
  std::vector<DeviceBuffer> held;
  const auto on_backend = [&](const void* src, std::size_t bytes) {
    held.push_back(be.allocate(bytes));
    if (src) be.upload(held.back().data(), src, bytes, {});
    return held.back().data();
  };
  const StoredTensorLookup lookup = [&](const std::string& name) {
    const auto& [in, info] = file.at(name);
    const auto bytes = in->bytes(*info);
    const StoredTensor s{bytes.data(), kernel_type(info->dtype, in->path().string() + ": tensor '" + name + "'")};
    return host ? s : StoredTensor{on_backend(bytes.data(), bytes.size()), s.type};
  };
  void* a = host ? out.a.data() : on_backend(nullptr, out.a.size() * 4);
  void* b = host ? out.b.data() : on_backend(nullptr, out.b.size() * 4);
  const auto two = materialize_parts(mod, man.represented_tasks(), task, lookup, a, b, kernels::ElemType::f32);
  std::vector<kernels::MaterializePart> parts(two.begin(), two.end());
  auto args = number_parts(parts, parts.data());
  if (!host)
    args.parts = static_cast<const kernels::MaterializePart*>(
        on_backend(parts.data(), parts.size() * sizeof(kernels::MaterializePart)));
  be.materialize(args, {});
  if (!host) {
    be.download(out.a.data(), a, out.a.size() * 4, {});
    be.download(out.b.data(), b, out.b.size() * 4, {});
  }
  be.synchronize({});
  file.check_intact();
  return out;
}

}  // namespace

RevertedModule revert_module(const Bundle& bundle, std::size_t module_index, i64 task_index,
                             Device device) {
  auto be = make_backend(device, {});
  return revert_with(*be, bundle, module_index, task_index);
}

i64 require_task(const BundleManifest& man, const std::filesystem::path& bundle_dir, const std::string& name,
                 const std::string& option) {
  const auto i = man.task_index(name);
  if (i < 0) {
    std::string names;
    for (const auto& t : man.tasks) names += (names.empty() ? "" : ", ") + t.name;
    throw usage_error(option + ": '" + name + "' is not in " + bundle_dir.string() + " (tasks: " + names + ")");
  }
  return i;
}

void write_task_adapter(const BundleManifest& man, const std::filesystem::path& bundle_dir, i64 t,
                        const std::vector<LoraModuleData>& modules, const std::filesystem::path& out,
                        const RevertOptions& options) {
  const auto& task = man.tasks.at(t);
  AdapterWriteOptions w;
  w.base_model_name_or_path = task.base_model_name_or_path;
  w.task_type = task.task_type;
  w.dtype = options.dtype;
  w.overwrite = options.overwrite;
  w.fan_in_fan_out = man.fan_in_fan_out;
  w.metadata = {{"revmerge_bundle_task", task.name}};
  w.extra_files = {recipe_file(options.recipe, {"revert",
                                                {{"task", task.name},
                                                 {"task source", task.source},
                                                 {"output", "adapter"},
                                                 {"dtype", std::string(dtype_name(options.dtype))}},
                                                {{"bundle", bundle_dir}}})};
  write_peft_adapter(out, modules, w);
}

void revert_task(const Bundle& bundle, const std::string& task, const std::filesystem::path& out,
                 const RevertOptions& options) {
  const auto& man = bundle.manifest();
  const auto t = require_task(man, bundle.dir(), task);
  if (options.overwrite) refuse_replacing_inputs(out, {bundle.dir()});
  auto be = make_backend(options.device, {options.threads, options.gpu});
  std::vector<LoraModuleData> modules;
  for (std::size_t i = 0; i < man.modules.size(); ++i) {
    throw_if_interrupted("revert");
    const auto& mod = man.modules[i];
    auto rm = revert_with(*be, bundle, i, t);
    modules.push_back({mod.path, mod.rank, mod.in, mod.out, std::move(rm.a), std::move(rm.b)});
  }
  write_task_adapter(man, bundle.dir(), t, modules, out, options);
}

void revert_task_full(const Bundle& bundle, const std::string& task,
                      const std::filesystem::path& base_dir, const std::filesystem::path& out,
                      const RevertOptions& options, std::optional<DType> dtype) {
  const auto t = require_task(bundle.manifest(), bundle.dir(), task);
  if (options.overwrite) refuse_replacing_inputs(out, {bundle.dir(), base_dir});
  const HfModel base(base_dir);
  const auto& man = bundle.manifest();
  std::map<std::string, std::size_t> by_tensor;
  for (std::size_t i = 0; i < man.modules.size(); ++i) {
    const auto& mod = man.modules[i];
    const auto name = mod.path + ".weight";
    const auto* w = base.checkpoint().find(name);
    // fan_in_fan_out: the base stores the weight in × out (GPT-2's Conv1D).
    const auto rows = man.fan_in_fan_out ? mod.in : mod.out, cols = man.fan_in_fan_out ? mod.out : mod.in;
    if (!w || w->info->shape != std::vector<i64>{rows, cols})
      throw shape_error(base_dir.string() + ": " +
                        (w ? "tensor '" + name + "' is not " : "no tensor '" + name + "' of ") +
                        std::to_string(rows) + " × " + std::to_string(cols) + " for the bundle's module '" +
                        mod.path + "'" + (man.fan_in_fan_out ? " (in × out: the tasks are fan_in_fan_out)" : "") +
                        "; is this the tasks' base model?");
    by_tensor[name] = i;
  }
  auto be = make_backend(options.device, {options.threads, options.gpu});
  ModelOutputOptions mo;
  mo.dtype = dtype;
  mo.overwrite = options.overwrite;
  mo.extra_files = {recipe_file(
      options.recipe, {"revert",
                       {{"task", task},
                        {"task source", man.tasks[t].source},
                        {"output", "full model"},
                        {"dtype", dtype ? std::string(dtype_name(*dtype)) : "the base model's (not given)"}},
                       {{"bundle", bundle.dir()}, {"base", base_dir}}})};
  const auto produce = [&](const std::string& name, std::vector<float>& values) {
    const auto it = by_tensor.find(name);
    if (it == by_tensor.end()) return false;
    const auto& mod = man.modules[it->second];
    const auto rm = revert_with(*be, bundle, it->second, t);
    const auto& w = base.checkpoint().at(name);
    std::vector<double> acc(values.size());
    w.file->read(*w.info, std::span<double>(acc));
    // W + B̂Â in double, rounded once (W + (B̂Â)ᵀ where W is stored in × out).
    const i64 out_stride = man.fan_in_fan_out ? 1 : mod.in, in_stride = man.fan_in_fan_out ? mod.out : 1;
    for (i64 o = 0; o < mod.out; ++o)
      for (i64 k = 0; k < mod.rank; ++k) {
        const double b = rm.b[o * mod.rank + k];
        if (b == 0) continue;
        for (i64 x = 0; x < mod.in; ++x) acc[o * out_stride + x * in_stride] += b * rm.a[k * mod.in + x];
      }
    std::copy(acc.begin(), acc.end(), values.begin());
    return true;
  };
  write_full_model(base, out, produce, mo);
}

}  // namespace revmerge
