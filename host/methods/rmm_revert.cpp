// revmerge revert: rebuild a task's factors from a bundle — for an rmm module x̂_i = μ + V c_i at
// every position, as one batched GEMM per side on the backend; for a rank module, or a task added
// later, the task's own truncated factors, zero-padded to the module's rank.
#include <memory>

#include "backend/backend.hpp"
#include "backend/registry.hpp"
#include "core/interrupt.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/hf_model.hpp"
#include "methods/model_output.hpp"
#include "methods/recipe.hpp"
#include "methods/store/shared_basis.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Rebuilds one side: out (m × r) = mean + basis · coef[:, :, task] (the mean alone for p = 0).
std::vector<float> revert_side(Backend& be, const SafetensorsFile& f, const std::string& path,
                               const char* side, i64 m, i64 r, i64 p, i64 n, i64 task) {
  auto mean = f.read_f32(bundle_tensor_name(path, side, "mean"));
  if (p == 0) return mean;
  const auto basis = f.read_f32(bundle_tensor_name(path, side, "basis"));
  const auto coef = f.read_f32(bundle_tensor_name(path, side, "coef"));
  auto d_mean = be.allocate(mean.size() * 4), d_basis = be.allocate(basis.size() * 4);
  auto d_coef = be.allocate(coef.size() * 4), d_out = be.allocate(mean.size() * 4);
  be.upload(d_mean.data(), mean.data(), mean.size() * 4, {});
  be.upload(d_basis.data(), basis.data(), basis.size() * 4, {});
  be.upload(d_coef.data(), coef.data(), coef.size() * 4, {});
  be.copy(d_out.data(), d_mean.data(), mean.size() * 4, {});
  // Column `task` of each p × n coefficient matrix, as a p × 1 matrix with row stride n.
  const MatBatch c{d_coef.f32() + task, m, p, 1, n, p * n};
  be.gemm(Op::none, Op::none, 1.0f, MatBatch::packed(d_basis.f32(), m, r, p), c, 1.0f,
          MatBatch::packed(d_out.f32(), m, r, 1), {});
  std::vector<float> out(static_cast<std::size_t>(m * r));
  be.download(out.data(), d_out.data(), out.size() * 4, {});
  be.synchronize({});
  return out;
}

// Entry `index` of a stack of truncated factors (tensors `M.lora_A.<part>`, Σk × in, and
// `M.lora_B.<part>`, out × Σk; entry i holds kept[i] directions), padded with zeros to the
// module's rank r.
RevertedModule revert_stacked(const Bundle& bundle, const BundleModule& mod, const char* part,
                              const std::vector<i64>& kept, i64 index) {
  const i64 r = mod.rank;
  RevertedModule out;
  out.a.assign(static_cast<std::size_t>(r * mod.in), 0.0f);
  out.b.assign(static_cast<std::size_t>(mod.out * r), 0.0f);
  i64 total = 0, first = 0;
  for (i64 t = 0; t < static_cast<i64>(kept.size()); ++t) {
    if (t == index) first = total;
    total += kept[t];
  }
  const i64 k = kept.at(index);
  if (k == 0) return out;
  const auto a = bundle.tensors().read_f32(bundle_tensor_name(mod.path, "lora_A", part));
  const auto b = bundle.tensors().read_f32(bundle_tensor_name(mod.path, "lora_B", part));
  std::copy(a.begin() + first * mod.in, a.begin() + (first + k) * mod.in, out.a.begin());
  for (i64 o = 0; o < mod.out; ++o)
    std::copy(b.begin() + o * total + first, b.begin() + o * total + first + k, out.b.begin() + o * r);
  return out;
}

// A shared_rows module: A = Vᵀ (K × in), B = task's B̃ (out × K), padded to rank r.
RevertedModule revert_shared(const Bundle& bundle, const BundleModule& mod, i64 n, i64 task) {
  const i64 r = mod.rank, k = mod.shared_rank;
  RevertedModule out;
  out.a.assign(static_cast<std::size_t>(r * mod.in), 0.0f);
  out.b.assign(static_cast<std::size_t>(mod.out * r), 0.0f);
  const auto a = bundle.tensors().read_f32(bundle_tensor_name(mod.path, "lora_A", "shared"));
  const auto b = bundle.tensors().read_f32(bundle_tensor_name(mod.path, "lora_B", "shared"));
  std::copy(a.begin(), a.end(), out.a.begin());
  for (i64 o = 0; o < mod.out; ++o)
    std::copy(b.begin() + o * n * k + task * k, b.begin() + o * n * k + (task + 1) * k, out.b.begin() + o * r);
  return out;
}

// A shared module: A' = (A_i V) Vᵀ and B' = U (Uᵀ s_iB_i) at the task's own rank, padded to r.
RevertedModule revert_shared_basis(const Bundle& bundle, const BundleModule& mod, i64 n, i64 task) {
  const i64 r = mod.rank, rt = mod.task_ranks.at(task);
  i64 first = 0, total = 0;
  for (i64 t = 0; t < n; ++t) {
    if (t == task) first = total;
    total += mod.task_ranks[t];
  }
  const auto& tf = bundle.tensors();
  const auto vt = tf.read_f32(bundle_tensor_name(mod.path, "lora_A", "shared"));
  const auto u = tf.read_f32(bundle_tensor_name(mod.path, "lora_B", "shared"));
  const auto ca = tf.read_f32(bundle_tensor_name(mod.path, "lora_A", "cores"));
  const auto cb = tf.read_f32(bundle_tensor_name(mod.path, "lora_B", "cores"));
  std::vector<float> a, b;
  shared_basis_task(vt.data(), u.data(), ca.data(), cb.data(), mod.in, mod.out, mod.shared_basis[0],
                    mod.shared_basis[1], total, first, rt, a, b);
  RevertedModule out;
  out.a.assign(static_cast<std::size_t>(r * mod.in), 0.0f);
  out.b.assign(static_cast<std::size_t>(mod.out * r), 0.0f);
  std::copy(a.begin(), a.end(), out.a.begin());
  for (i64 o = 0; o < mod.out; ++o) std::copy(b.begin() + o * rt, b.begin() + (o + 1) * rt, out.b.begin() + o * r);
  return out;
}

RevertedModule revert_with(Backend& be, const Bundle& bundle, std::size_t module_index, i64 task) {
  const auto& man = bundle.manifest();
  const auto& mod = man.modules.at(module_index);
  const i64 n = man.represented_tasks(), r = mod.rank;
  if (task >= n) return revert_stacked(bundle, mod, "added", mod.added_kept_ranks, task - n);
  if (mod.representation == Representation::rank) return revert_stacked(bundle, mod, "factors", mod.kept_ranks, task);
  if (mod.representation == Representation::shared_rows) return revert_shared(bundle, mod, n, task);
  if (mod.representation == Representation::shared) return revert_shared_basis(bundle, mod, n, task);
  RevertedModule out;
  const auto a_pos = revert_side(be, bundle.tensors(), mod.path, "lora_A", mod.in, r, mod.basis[0], n, task);
  out.a.resize(a_pos.size());  // position-major in × r  →  r × in
  for (i64 j = 0; j < mod.in; ++j)
    for (i64 k = 0; k < r; ++k) out.a[k * mod.in + j] = a_pos[j * r + k];
  out.b = revert_side(be, bundle.tensors(), mod.path, "lora_B", mod.out, r, mod.basis[1], n, task);
  return out;
}

i64 require_task(const Bundle& bundle, const std::string& task) {
  const auto i = bundle.manifest().task_index(task);
  if (i < 0) {
    std::string names;
    for (const auto& t : bundle.manifest().tasks) names += (names.empty() ? "" : ", ") + t.name;
    throw usage_error("--task: '" + task + "' is not in " + bundle.dir().string() +
                      " (tasks: " + names + ")");
  }
  return i;
}

}  // namespace

RevertedModule revert_module(const Bundle& bundle, std::size_t module_index, i64 task_index,
                             Device device) {
  auto be = make_backend(device, {});
  return revert_with(*be, bundle, module_index, task_index);
}

void revert_task(const Bundle& bundle, const std::string& task, const std::filesystem::path& out,
                 const RevertOptions& options) {
  const auto t = require_task(bundle, task);
  auto be = make_backend(options.device, {options.threads, options.gpu});
  const auto& man = bundle.manifest();
  std::vector<LoraModuleData> modules;
  for (std::size_t i = 0; i < man.modules.size(); ++i) {
    throw_if_interrupted("revert");
    const auto& mod = man.modules[i];
    auto rm = revert_with(*be, bundle, i, t);
    modules.push_back({mod.path, mod.rank, mod.in, mod.out, std::move(rm.a), std::move(rm.b)});
  }
  AdapterWriteOptions w;
  w.base_model_name_or_path = man.tasks[t].base_model_name_or_path;
  w.task_type = man.tasks[t].task_type;
  w.dtype = options.dtype;
  w.overwrite = options.overwrite;
  w.metadata = {{"revmerge_bundle_task", task}};
  w.extra_files = {recipe_file(options.recipe, {"revert",
                                                {{"task", task},
                                                 {"task source", man.tasks[t].source},
                                                 {"output", "adapter"},
                                                 {"dtype", std::string(dtype_name(options.dtype))}},
                                                {{"bundle", bundle.dir()}}})};
  write_peft_adapter(out, modules, w);
}

void revert_task_full(const Bundle& bundle, const std::string& task,
                      const std::filesystem::path& base_dir, const std::filesystem::path& out,
                      const RevertOptions& options, std::optional<DType> dtype) {
  const auto t = require_task(bundle, task);
  const HfModel base(base_dir);
  const auto& man = bundle.manifest();
  std::map<std::string, std::size_t> by_tensor;
  for (std::size_t i = 0; i < man.modules.size(); ++i) {
    const auto& mod = man.modules[i];
    const auto name = mod.path + ".weight";
    const auto* w = base.checkpoint().find(name);
    if (!w || w->info->shape != std::vector<i64>{mod.out, mod.in})
      throw shape_error(base_dir.string() + ": " +
                        (w ? "tensor '" + name + "' is not " : "no tensor '" + name + "' of ") +
                        std::to_string(mod.out) + " × " + std::to_string(mod.in) +
                        " for the bundle's module '" + mod.path + "'; is this the tasks' base model?");
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
    // W + B̂Â in double, rounded once.
    for (i64 o = 0; o < mod.out; ++o)
      for (i64 k = 0; k < mod.rank; ++k) {
        const double b = rm.b[o * mod.rank + k];
        if (b == 0) continue;
        for (i64 x = 0; x < mod.in; ++x) acc[o * mod.in + x] += b * rm.a[k * mod.in + x];
      }
    std::copy(acc.begin(), acc.end(), values.begin());
    return true;
  };
  write_full_model(base, out, produce, mo);
}

}  // namespace revmerge
