// revmerge._revmerge.Bundle: a ResidentBundle whose tasks come back as PEFT-named arrays that
// any DLPack consumer (torch, cupy, numpy) takes without a copy, or straight into arrays the
// caller owns (a loaded PEFT model's own LoRA parameters).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "bindings.hpp"
#include "revmerge/error.hpp"
#include "revmerge/resident.hpp"

namespace nb = nanobind;

namespace revmerge::python {
namespace {

using i64 = std::int64_t;
using TaskRef = std::variant<i64, std::string>;

constexpr std::string_view kPrefix = "base_model.model.";

// "cpu", "cuda", "cuda:N" or "auto".
std::pair<Device, int> parse_device(const std::string& text) {
  if (text == "cpu") return {Device::cpu, 0};
  if (text == "auto") return {Device::automatic, 0};
  if (text == "cuda") return {Device::cuda, 0};
  if (text.starts_with("cuda:")) {
    const auto digits = text.substr(5);
    if (!digits.empty() && digits.size() < 4 && digits.find_first_not_of("0123456789") == std::string::npos)
      return {Device::cuda, std::stoi(digits)};
  }
  throw usage_error("device: '" + text + "' is not cpu, cuda, cuda:N or auto");
}

nb::dlpack::dtype dlpack_type(DType t) {
  switch (t) {
    case DType::F32: return nb::dtype<float>();
    case DType::F16: return {static_cast<std::uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
    case DType::BF16: return {static_cast<std::uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};
    default: throw usage_error("dtype: only float32, float16 and bfloat16 are rebuilt");
  }
}

std::optional<DType> from_dlpack_type(nb::dlpack::dtype t) {
  if (t.lanes != 1) return std::nullopt;
  if (t.code == static_cast<std::uint8_t>(nb::dlpack::dtype_code::Float) && t.bits == 32) return DType::F32;
  if (t.code == static_cast<std::uint8_t>(nb::dlpack::dtype_code::Float) && t.bits == 16) return DType::F16;
  if (t.code == static_cast<std::uint8_t>(nb::dlpack::dtype_code::Bfloat) && t.bits == 16) return DType::BF16;
  return std::nullopt;
}

class PyBundle {
 public:
  PyBundle(const std::string& path, const std::string& device, int threads) : path_(path) {
    const auto [kind, gpu] = parse_device(device);
    {
      nb::gil_scoped_release unlocked;
      rb_ = std::make_unique<ResidentBundle>(path, kind, gpu, threads);
    }
    device_ = rb_->on_host() ? "cpu" : "cuda:" + std::to_string(rb_->gpu());
    const auto& man = rb_->manifest();
    for (const auto& t : man.tasks) tasks_.push_back(t.name);
    for (std::size_t i = 0; i < man.modules.size(); ++i) {
      modules_.push_back(man.modules[i].path);
      module_index_[man.modules[i].path] = static_cast<i64>(i);
    }
  }

  const std::vector<std::string>& tasks() const { return tasks_; }
  const std::vector<std::string>& modules() const { return modules_; }
  const std::string& device() const { return device_; }
  std::string path() const { return path_; }
  std::uint64_t memory_bytes() { return open().memory_bytes(); }
  std::string backend() { return open().device_name(); }
  void close() {
    nb::gil_scoped_release unlocked;
    rb_.reset();
  }

  // (rank, in, out) of a module, by name.
  nb::tuple shape(const std::string& module) {
    const auto& mod = open().manifest().modules[module_of(module, "shape")];
    return nb::make_tuple(mod.rank, mod.in, mod.out);
  }

  // The scale folded into the task's B of a module (alpha / r), as the bundle records it.
  double scale(const TaskRef& task, const std::string& module) {
    const auto& mod = open().manifest().modules[module_of(module, "scale")];
    const auto t = task_of(task);
    if (mod.task_scales.empty())
      throw unsupported_error(path_ + " does not record the tasks' scales (written by an older revmerge)");
    return mod.task_scales[static_cast<std::size_t>(t)];
  }

  nb::dict state_dict(const TaskRef& task, const std::string& dtype_name,
                      const std::optional<std::vector<std::string>>& names,
                      const std::optional<std::string>& adapter_name, bool fold_scale) {
    auto& rb = open();
    const i64 t = task_of(task);
    const DType dtype = parse_float_dtype_option(dtype_name, "dtype");
    const auto type = dlpack_type(dtype);
    const auto& man = rb.manifest();
    std::vector<i64> modules;
    if (names)
      for (const auto& n : *names) modules.push_back(module_of(n, "modules"));
    else
      for (std::size_t m = 0; m < man.modules.size(); ++m) modules.push_back(static_cast<i64>(m));
    // One allocation for every output, each tensor 256-byte aligned.
    const auto round = [](std::size_t b) { return (b + 255) / 256 * 256; };
    std::size_t total = 0;
    for (const i64 m : modules) {
      const auto& mod = man.modules[m];
      total += round(static_cast<std::size_t>(mod.rank * mod.in) * dtype_size(dtype)) +
               round(static_cast<std::size_t>(mod.out * mod.rank) * dtype_size(dtype));
    }
    std::shared_ptr<void> memory;
    std::vector<void*> a, b;
    {
      nb::gil_scoped_release unlocked;
      memory = rb.allocate(std::max<std::size_t>(total, 1));
      auto* at = static_cast<std::byte*>(memory.get());
      for (const i64 m : modules) {
        const auto& mod = man.modules[m];
        a.push_back(at);
        at += round(static_cast<std::size_t>(mod.rank * mod.in) * dtype_size(dtype));
        b.push_back(at);
        at += round(static_cast<std::size_t>(mod.out * mod.rank) * dtype_size(dtype));
      }
      rb.materialize(t, modules, dtype, a, b, nullptr, fold_scale);
      rb.synchronize(nullptr);
    }
    // Every array keeps the one allocation alive through this capsule.
    nb::capsule owner(new std::shared_ptr<void>(std::move(memory)),
                      [](void* p) noexcept { delete static_cast<std::shared_ptr<void>*>(p); });
    const int device_type = rb.on_host() ? nb::device::cpu::value : nb::device::cuda::value;
    const int device_id = rb.on_host() ? 0 : rb.gpu();
    const std::string slot = adapter_name ? "." + *adapter_name : "";
    nb::dict out;
    for (std::size_t i = 0; i < modules.size(); ++i) {
      const auto& mod = man.modules[modules[i]];
      const std::string key = std::string(kPrefix) + mod.path;
      const std::size_t shape_a[2] = {static_cast<std::size_t>(mod.rank), static_cast<std::size_t>(mod.in)};
      const std::size_t shape_b[2] = {static_cast<std::size_t>(mod.out), static_cast<std::size_t>(mod.rank)};
      out[nb::str((key + ".lora_A" + slot + ".weight").c_str())] =
          nb::ndarray<nb::array_api>(a[i], 2, shape_a, owner, nullptr, type, device_type, device_id);
      out[nb::str((key + ".lora_B" + slot + ".weight").c_str())] =
          nb::ndarray<nb::array_api>(b[i], 2, shape_b, owner, nullptr, type, device_type, device_id);
    }
    return out;
  }

  void materialize(const TaskRef& task, const nb::dict& targets, std::uintptr_t stream, bool fold_scale) {
    auto& rb = open();
    const i64 t = task_of(task);
    const auto& man = rb.manifest();
    // Per module its A and B target, in the order first met.
    std::vector<i64> modules;
    std::map<i64, std::array<void*, 2>> slots;
    std::optional<DType> dtype;
    for (const auto& [k, v] : targets) {
      const std::string key = nb::cast<std::string>(k);
      const auto [m, side] = parse_key(key);
      auto array = nb::cast<nb::ndarray<>>(v);
      const auto& mod = man.modules[m];
      const i64 rows = side == 0 ? mod.rank : mod.out, cols = side == 0 ? mod.in : mod.rank;
      const auto type = from_dlpack_type(array.dtype());
      if (!type) throw usage_error("materialize: '" + key + "' is not float32, float16 or bfloat16");
      if (dtype && *dtype != *type)
        throw usage_error("materialize: '" + key + "' is " + std::string(dtype_name(*type)) +
                          " but other targets are " + std::string(dtype_name(*dtype)) + " (one dtype per call)");
      dtype = type;
      if (array.ndim() != 2 || static_cast<i64>(array.shape(0)) != rows || static_cast<i64>(array.shape(1)) != cols)
        throw usage_error("materialize: '" + key + "' must be " + std::to_string(rows) + " × " + std::to_string(cols));
      if (array.stride(1) != 1 || array.stride(0) != cols)
        throw usage_error("materialize: '" + key + "' is not contiguous (row-major)");
      const bool host = array.device_type() == nb::device::cpu::value;
      if (host != rb.on_host() || (!host && (array.device_type() != nb::device::cuda::value ||
                                             array.device_id() != rb.gpu())))
        throw usage_error("materialize: '" + key + "' is not in the bundle's memory (" + device_ + ")");
      auto& slot = slots[m];
      if (slot[side]) throw usage_error("materialize: '" + key + "' is given twice");
      if (!slot[0] && !slot[1]) modules.push_back(m);
      slot[side] = array.data();
    }
    if (!dtype) throw usage_error("materialize: no targets given");
    std::vector<void*> a, b;
    for (const i64 m : modules) {
      const auto& slot = slots[m];
      if (!slot[0] || !slot[1])
        throw usage_error("materialize: module '" + man.modules[m].path + "' has its " +
                          (slot[0] ? "lora_A" : "lora_B") + " target but not its " + (slot[0] ? "lora_B" : "lora_A"));
      a.push_back(slot[0]);
      b.push_back(slot[1]);
    }
    nb::gil_scoped_release unlocked;
    rb.materialize(t, modules, *dtype, a, b, reinterpret_cast<void*>(stream), fold_scale);
  }

  void save_adapter(const TaskRef& task, const std::string& out, const std::string& dtype, bool force) {
    auto& rb = open();
    const std::string name = tasks_.at(static_cast<std::size_t>(task_of(task)));
    RevertOptions o;
    o.dtype = parse_float_dtype_option(dtype, "dtype");
    o.overwrite = force;
    o.recipe.command = {"python", "revmerge.Bundle(" + path_ + ").save_adapter", name, out};
    nb::gil_scoped_release unlocked;
    rb.save_adapter(name, out, o);
  }

  void synchronize(std::uintptr_t stream) {
    auto& rb = open();
    nb::gil_scoped_release unlocked;
    rb.synchronize(reinterpret_cast<void*>(stream));
  }

 private:
  ResidentBundle& open() {
    if (!rb_) throw usage_error("Bundle " + path_ + " is closed");
    return *rb_;
  }

  i64 task_of(const TaskRef& task) const {
    if (const auto* i = std::get_if<i64>(&task)) {
      if (*i < 0 || *i >= static_cast<i64>(tasks_.size()))
        throw usage_error("task " + std::to_string(*i) + " is outside 0 .. " + std::to_string(tasks_.size() - 1) +
                          " (" + path_ + ")");
      return *i;
    }
    const auto& name = std::get<std::string>(task);
    for (std::size_t i = 0; i < tasks_.size(); ++i)
      if (tasks_[i] == name) return static_cast<i64>(i);
    std::string all;
    for (const auto& n : tasks_) all += (all.empty() ? "" : ", ") + n;
    throw usage_error("task '" + name + "' is not in " + path_ + " (tasks: " + all + ")");
  }

  i64 module_of(const std::string& name, const std::string& what) const {
    const auto it = module_index_.find(name);
    if (it == module_index_.end())
      throw usage_error(what + ": module '" + name + "' is not in " + path_);
    return it->second;
  }

  // "[base_model.model.]<module>.lora_A[.<adapter>].weight" → (module, 0 for A / 1 for B).
  std::pair<i64, int> parse_key(const std::string& key) const {
    std::string_view k = key;
    if (k.starts_with(kPrefix)) k.remove_prefix(kPrefix.size());
    for (const int side : {0, 1}) {
      const std::string_view marker = side == 0 ? ".lora_A." : ".lora_B.";
      const auto at = k.rfind(marker);
      if (at == std::string_view::npos || !k.ends_with("weight")) continue;
      const auto module = module_index_.find(std::string(k.substr(0, at)));
      if (module == module_index_.end())
        throw usage_error("materialize: '" + key + "' names no module of " + path_);
      return {module->second, side};
    }
    throw usage_error("materialize: '" + key + "' is not a LoRA factor key (<module>.lora_A[.<adapter>].weight)");
  }

  std::string path_, device_;
  std::unique_ptr<ResidentBundle> rb_;
  std::vector<std::string> tasks_, modules_;
  std::map<std::string, i64> module_index_;
};

}  // namespace

void bind_bundle(nb::module_& m) {
  nb::class_<PyBundle>(m, "Bundle")
      .def(nb::init<const std::string&, const std::string&, int>(), nb::arg("path"), nb::arg("device") = "cpu",
           nb::arg("threads") = 0)
      .def_prop_ro("tasks", &PyBundle::tasks)
      .def_prop_ro("modules", &PyBundle::modules)
      .def_prop_ro("device", &PyBundle::device)
      .def_prop_ro("path", &PyBundle::path)
      .def_prop_ro("memory_bytes", &PyBundle::memory_bytes)
      .def_prop_ro("backend", &PyBundle::backend)
      .def("shape", &PyBundle::shape, nb::arg("module"))
      .def("state_dict", &PyBundle::state_dict, nb::arg("task"), nb::arg("dtype") = "bfloat16",
           nb::arg("modules") = nb::none(), nb::arg("adapter_name") = nb::none(), nb::arg("fold_scale") = true)
      .def("materialize", &PyBundle::materialize, nb::arg("task"), nb::arg("targets"), nb::arg("stream") = 0,
           nb::arg("fold_scale") = true)
      .def("scale", &PyBundle::scale, nb::arg("task"), nb::arg("module"))
      .def("save_adapter", &PyBundle::save_adapter, nb::arg("task"), nb::arg("out"), nb::arg("dtype") = "float32",
           nb::arg("force") = false)
      .def("synchronize", &PyBundle::synchronize, nb::arg("stream") = 0)
      .def("close", &PyBundle::close);
}

}  // namespace revmerge::python
