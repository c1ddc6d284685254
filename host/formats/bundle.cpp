#include "revmerge/bundle.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <cmath>
#include <set>

#include "core/json_file.hpp"
#include "revmerge/error.hpp"

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace revmerge {

std::int64_t BundleManifest::task_index(const std::string& name) const {
  for (std::size_t i = 0; i < tasks.size(); ++i)
    if (tasks[i].name == name) return static_cast<std::int64_t>(i);
  return -1;
}

const char* representation_name(Representation r) noexcept {
  switch (r) {
    case Representation::rank: return "rank";
    case Representation::shared_rows: return "shared_rows";
    case Representation::shared: return "shared";
    case Representation::rmm: break;
  }
  return "rmm";
}

std::int64_t BundleModule::stored_numbers(std::int64_t n) const {
  std::int64_t added = 0;
  for (const auto x : added_kept_ranks) added += x;
  added *= in + out;
  if (representation == Representation::rank) {
    std::int64_t k = 0;
    for (const auto x : kept_ranks) k += x;
    return k * (in + out) + added;
  }
  if (representation == Representation::shared_rows) return shared_rank * (in + n * out) + added;
  if (representation == Representation::shared) {
    std::int64_t r = 0;  // Σ r_i over the tasks the representation covers
    for (std::int64_t t = 0; t < n && t < static_cast<std::int64_t>(task_ranks.size()); ++t) r += task_ranks[t];
    return shared_basis[0] * (in + r) + shared_basis[1] * (out + r) + added;
  }
  return in * (basis[0] * (rank + n) + rank) + out * (basis[1] * (rank + n) + rank) + added;
}

std::string bundle_tensor_name(const std::string& module_path, const char* side, const char* part) {
  return module_path + "." + side + "." + part;
}

std::string manifest_to_json(const BundleManifest& m) {
  ojson j;
  j["format"] = "revmerge-bundle";
  j["format_version"] = m.format_version;
  j["method"] = m.method;
  j["basis"] = m.basis;
  j["dtype"] = dtype_name(m.dtype);
  j["storage_ratio"] = m.storage_ratio;
  j["input_bytes"] = m.input_bytes;
  j["stored_bytes"] = m.stored_bytes;
  j["created_by"] = m.created_by;
  j["backend"] = m.backend;
  if (m.fan_in_fan_out) j["fan_in_fan_out"] = true;
  if (m.base_tasks != 0 && m.base_tasks != static_cast<std::int64_t>(m.tasks.size()))
    j["base_tasks"] = m.base_tasks;
  j["tasks"] = ojson::array();
  for (const auto& t : m.tasks)
    j["tasks"].push_back({{"name", t.name}, {"source", t.source},
                          {"base_model_name_or_path", t.base_model_name_or_path},
                          {"task_type", t.task_type}});
  j["modules"] = ojson::array();
  for (const auto& mod : m.modules) {
    ojson e{{"path", mod.path}, {"layer", mod.layer}, {"name", mod.name},
            {"in", mod.in}, {"out", mod.out}, {"rank", mod.rank},
            {"task_ranks", mod.task_ranks}};
    if (!mod.task_scales.empty()) e["task_scales"] = mod.task_scales;
    if (m.format_version >= 2) {
      e["representation"] = representation_name(mod.representation);
      if (mod.representation == Representation::rmm) {
        e["basis_a"] = mod.basis[0];
        e["basis_b"] = mod.basis[1];
      } else if (mod.representation == Representation::rank) {
        e["kept_ranks"] = mod.kept_ranks;
      } else if (mod.representation == Representation::shared_rows) {
        e["shared_rank"] = mod.shared_rank;
      } else {
        e["shared_basis"] = mod.shared_basis;
      }
    }
    if (!mod.added_kept_ranks.empty()) e["added_kept_ranks"] = mod.added_kept_ranks;
    e["storage_ratio"] = mod.storage_ratio;
    if (mod.representation == Representation::rmm) {
      e["factor_error_a"] = mod.factor_error_a;
      e["factor_error_b"] = mod.factor_error_b;
    }
    e["delta_error"] = mod.delta_error;
    e["delta_norm"] = mod.delta_norm;
    if (mod.representation == Representation::rmm) {
      e["spectrum_a"] = mod.spectrum_a;
      e["spectrum_b"] = mod.spectrum_b;
    }
    j["modules"].push_back(std::move(e));
  }
  return j.dump(1) + "\n";
}

namespace {

template <class T>
T field(const nlohmann::json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end()) throw format_error(where + ": missing field '" + key + "'");
  return json_as<T>(*it, where + ": field '" + key + "'");
}

// Per-task numbers; JSON has no NaN, so a non-finite error is written as null and read back
// as NaN.
std::vector<double> numbers(const nlohmann::json& j, const char* key, const std::string& where) {
  const auto arr = field<nlohmann::json>(j, key, where);
  if (!arr.is_array()) throw format_error(where + ": field '" + key + "' is not a list");
  std::vector<double> out;
  for (const auto& v : arr) {
    if (v.is_null())
      out.push_back(NAN);
    else if (v.is_number())
      out.push_back(v.get<double>());
    else
      throw format_error(where + ": field '" + key + "' holds a non-number");
  }
  return out;
}

}  // namespace

BundleManifest parse_manifest(const std::string& text, const std::string& file) {
  const auto j = parse_json_text(text, file);
  if (!j.is_object()) throw format_error(file + ": not a JSON object");
  if (field<std::string>(j, "format", file) != "revmerge-bundle")
    throw format_error(file + ": not a revmerge bundle manifest (format is not 'revmerge-bundle')");
  BundleManifest m;
  m.format_version = field<int>(j, "format_version", file);
  if (m.format_version < 1 || m.format_version > kBundleFormatVersion)
    throw unsupported_error(file + ": bundle format_version " + std::to_string(m.format_version) +
                            " is not supported (this revmerge reads versions 1 to " +
                            std::to_string(kBundleFormatVersion) + ")");
  const bool v1 = m.format_version == 1;
  m.method = field<std::string>(j, "method", file);
  if (m.method != "rmm" && (v1 || (m.method != "auto" && m.method != "rank")))
    throw unsupported_error(file + ": bundle method '" + m.method + "' is not supported");
  m.basis = field<std::int64_t>(j, "basis", file);
  const auto dt = parse_dtype(field<std::string>(j, "dtype", file));
  if (!dt || !is_float_dtype(*dt)) throw format_error(file + ": field 'dtype' is not a float dtype");
  m.dtype = *dt;
  m.storage_ratio = field<double>(j, "storage_ratio", file);
  for (auto [key, to] : {std::pair{"input_bytes", &m.input_bytes}, std::pair{"stored_bytes", &m.stored_bytes}})
    if (j.contains(key)) *to = field<std::uint64_t>(j, key, file);
  m.created_by = field<std::string>(j, "created_by", file);
  if (const auto it = j.find("backend"); it != j.end() && it->is_string()) m.backend = it->get<std::string>();
  if (j.contains("fan_in_fan_out")) m.fan_in_fan_out = field<bool>(j, "fan_in_fan_out", file);
  std::set<std::string> names;
  for (const auto& t : field<nlohmann::json>(j, "tasks", file)) {
    BundleTask task{field<std::string>(t, "name", file), field<std::string>(t, "source", file),
                    field<std::string>(t, "base_model_name_or_path", file),
                    field<std::string>(t, "task_type", file)};
    if (!names.insert(task.name).second)
      throw format_error(file + ": task '" + task.name + "' appears twice");
    m.tasks.push_back(std::move(task));
  }
  const auto all = static_cast<std::int64_t>(m.tasks.size());
  if (!v1 && j.contains("base_tasks")) m.base_tasks = field<std::int64_t>(j, "base_tasks", file);
  const auto n = m.represented_tasks();  // the tasks the representations cover
  if (n < 2 || n > all)
    throw format_error(file + ": a bundle's representations cover 2 .. " + std::to_string(all) +
                       " tasks, this one " + std::to_string(n));
  if (v1 && (m.basis < 1 || m.basis >= n))
    throw format_error(file + ": basis " + std::to_string(m.basis) + " is outside 1 .. " + std::to_string(n - 1));
  for (const auto& mj : field<nlohmann::json>(j, "modules", file)) {
    BundleModule mod;
    mod.path = field<std::string>(mj, "path", file);
    const auto where = file + ": module '" + mod.path + "'";
    mod.layer = field<int>(mj, "layer", where);
    mod.name = field<std::string>(mj, "name", where);
    mod.in = field<std::int64_t>(mj, "in", where);
    mod.out = field<std::int64_t>(mj, "out", where);
    mod.rank = field<std::int64_t>(mj, "rank", where);
    mod.task_ranks = field<std::vector<std::int64_t>>(mj, "task_ranks", where);
    if (mj.contains("task_scales")) mod.task_scales = field<std::vector<double>>(mj, "task_scales", where);
    mod.storage_ratio = field<double>(mj, "storage_ratio", where);
    mod.basis = {m.basis, m.basis};
    if (!v1) {
      const auto rep = field<std::string>(mj, "representation", where);
      if (rep == "rank")
        mod.representation = Representation::rank;
      else if (rep == "shared_rows")
        mod.representation = Representation::shared_rows;
      else if (rep == "shared")
        mod.representation = Representation::shared;
      else if (rep != "rmm")
        throw unsupported_error(where + ": representation '" + rep +
                                "' is not supported (rmm, rank, shared_rows, shared)");
    }
    const bool rmm = mod.representation == Representation::rmm;
    if (rmm) {
      if (!v1)
        mod.basis = {field<std::int64_t>(mj, "basis_a", where), field<std::int64_t>(mj, "basis_b", where)};
      for (const auto p : mod.basis)
        if (p < (v1 ? 1 : 0) || p >= n)
          throw format_error(where + ": basis " + std::to_string(p) + " is outside " +
                             (v1 ? "1" : "0") + " .. " + std::to_string(n - 1));
      mod.factor_error_a = numbers(mj, "factor_error_a", where);
      mod.factor_error_b = numbers(mj, "factor_error_b", where);
      mod.spectrum_a = numbers(mj, "spectrum_a", where);
      mod.spectrum_b = numbers(mj, "spectrum_b", where);
    } else if (mod.representation == Representation::rank) {
      mod.basis = {0, 0};
      mod.kept_ranks = field<std::vector<std::int64_t>>(mj, "kept_ranks", where);
    } else if (mod.representation == Representation::shared_rows) {
      mod.basis = {0, 0};
      mod.shared_rank = field<std::int64_t>(mj, "shared_rank", where);
    } else {
      mod.basis = {0, 0};
      const auto k = field<std::vector<std::int64_t>>(mj, "shared_basis", where);
      if (k.size() != 2) throw format_error(where + ": shared_basis must be [Kv, Ku] (two sizes)");
      mod.shared_basis = {k[0], k[1]};
    }
    if (mj.contains("added_kept_ranks"))
      mod.added_kept_ranks = field<std::vector<std::int64_t>>(mj, "added_kept_ranks", where);
    mod.delta_error = numbers(mj, "delta_error", where);
    mod.delta_norm = numbers(mj, "delta_norm", where);
    if (mod.in < 1 || mod.out < 1 || mod.rank < 1)
      throw format_error(where + ": in, out and rank must be positive");
    for (const auto* v : {&mod.factor_error_a, &mod.factor_error_b, &mod.spectrum_a, &mod.spectrum_b})
      if (rmm && static_cast<std::int64_t>(v->size()) != n)
        throw format_error(where + ": factor errors and spectra must have " + std::to_string(n) + " entries");
    for (const auto* v : {&mod.delta_error, &mod.delta_norm})
      if (static_cast<std::int64_t>(v->size()) != all)
        throw format_error(where + ": per-task lists must have " + std::to_string(all) + " entries");
    if (static_cast<std::int64_t>(mod.task_ranks.size()) != all)
      throw format_error(where + ": task_ranks must have " + std::to_string(all) + " entries");
    if (!mod.task_scales.empty() && static_cast<std::int64_t>(mod.task_scales.size()) != all)
      throw format_error(where + ": task_scales must have " + std::to_string(all) + " entries");
    for (const double s : mod.task_scales)
      if (!std::isfinite(s) || s == 0)
        throw format_error(where + ": task_scales must be finite and non-zero");
    if (static_cast<std::int64_t>(mod.added_kept_ranks.size()) != all - n)
      throw format_error(where + ": added_kept_ranks must have " + std::to_string(all - n) +
                         " entries (one per added task)");
    for (std::int64_t t = n; t < all; ++t)
      if (mod.added_kept_ranks[t - n] < 0 || mod.added_kept_ranks[t - n] > mod.task_ranks[t])
        throw format_error(where + ": kept rank " + std::to_string(mod.added_kept_ranks[t - n]) +
                           " of added task " + std::to_string(t) + " is outside 0 .. " +
                           std::to_string(mod.task_ranks[t]) + " (its rank)");
    for (const auto rank : mod.task_ranks)
      if (rank < 1 || rank > mod.rank)
        throw format_error(where + ": task rank " + std::to_string(rank) + " is outside 1 .. " +
                           std::to_string(mod.rank) + " (the module's rank)");
    if (mod.representation == Representation::shared_rows &&
        (mod.shared_rank < 1 || mod.shared_rank > mod.rank))
      throw format_error(where + ": shared_rank " + std::to_string(mod.shared_rank) + " is outside 1 .. " +
                         std::to_string(mod.rank) + " (the module's rank)");
    if (mod.representation == Representation::shared &&
        (mod.shared_basis[0] < 1 || mod.shared_basis[0] > mod.in || mod.shared_basis[1] < 1 ||
         mod.shared_basis[1] > mod.out))
      throw format_error(where + ": shared_basis [" + std::to_string(mod.shared_basis[0]) + ", " +
                         std::to_string(mod.shared_basis[1]) + "] is outside [1 .. in, 1 .. out] = [1 .. " +
                         std::to_string(mod.in) + ", 1 .. " + std::to_string(mod.out) + "]");
    if (mod.representation == Representation::rank) {
      if (static_cast<std::int64_t>(mod.kept_ranks.size()) != n)
        throw format_error(where + ": kept_ranks must have " + std::to_string(n) + " entries");
      for (std::int64_t t = 0; t < n; ++t)
        if (mod.kept_ranks[t] < 0 || mod.kept_ranks[t] > mod.task_ranks[t])
          throw format_error(where + ": kept rank " + std::to_string(mod.kept_ranks[t]) +
                             " of task " + std::to_string(t) + " is outside 0 .. " +
                             std::to_string(mod.task_ranks[t]) + " (its rank)");
    }
    m.modules.push_back(std::move(mod));
  }
  return m;
}

std::string bundle_shard_name(int k, int count) {
  return fmt::format("bundle-{:05d}-of-{:05d}.safetensors", k, count);
}

Bundle::Bundle(const fs::path& dir) : dir_(dir) {
  if (!fs::is_directory(dir)) throw io_error(dir.string() + ": not a folder");
  const auto manifest_path = dir / kBundleManifestName;
  if (!fs::exists(manifest_path))
    throw io_error(dir.string() + ": no " + kBundleManifestName + " (not a revmerge bundle)");
  manifest_ = parse_manifest(read_text_file(manifest_path), manifest_path.string());
  const bool single = fs::exists(dir / kBundleTensorsName), sharded = fs::exists(dir / kBundleIndexName);
  if (single && sharded)
    throw format_error(dir.string() + ": holds both " + kBundleTensorsName + " and " + kBundleIndexName +
                       " (a bundle's tensors are in one or the other)");
  if (!single && !sharded)
    throw io_error(dir.string() + ": neither " + kBundleTensorsName + " nor " + kBundleIndexName +
                   " is in this folder (its tensors are missing)");
  tensors_ = std::make_unique<Checkpoint>(dir / (single ? kBundleTensorsName : kBundleIndexName));
  const auto n = manifest_.represented_tasks();
  const auto check = [&](const std::string& name, const std::vector<std::int64_t>& shape) {
    const auto* t = tensors_->find(name);
    if (t == nullptr)
      throw format_error(tensors_->path().string() + ": tensor '" + name + "' is missing");
    if (t->info->shape != shape || !is_float_dtype(t->info->dtype))
      throw format_error(t->file->path().string() + ": tensor '" + name +
                         "' does not have the float shape the manifest implies");
  };
  for (const auto& mod : manifest_.modules) {
    std::int64_t added = 0;
    for (const auto x : mod.added_kept_ranks) added += x;
    if (added > 0) {
      check(bundle_tensor_name(mod.path, "lora_A", "added"), {added, mod.in});
      check(bundle_tensor_name(mod.path, "lora_B", "added"), {mod.out, added});
    }
    if (mod.representation == Representation::shared_rows) {
      check(bundle_tensor_name(mod.path, "lora_A", "shared"), {mod.shared_rank, mod.in});
      check(bundle_tensor_name(mod.path, "lora_B", "shared"), {mod.out, n * mod.shared_rank});
      continue;
    }
    if (mod.representation == Representation::shared) {
      std::int64_t r = 0;
      for (std::int64_t t = 0; t < n; ++t) r += mod.task_ranks[t];
      const auto [kv, ku] = mod.shared_basis;
      check(bundle_tensor_name(mod.path, "lora_A", "shared"), {kv, mod.in});
      check(bundle_tensor_name(mod.path, "lora_B", "shared"), {mod.out, ku});
      check(bundle_tensor_name(mod.path, "lora_A", "cores"), {r, kv});
      check(bundle_tensor_name(mod.path, "lora_B", "cores"), {ku, r});
      continue;
    }
    if (mod.representation == Representation::rank) {
      std::int64_t k = 0;
      for (const auto x : mod.kept_ranks) k += x;
      if (k == 0) continue;  // every task's delta dropped: nothing stored
      check(bundle_tensor_name(mod.path, "lora_A", "factors"), {k, mod.in});
      check(bundle_tensor_name(mod.path, "lora_B", "factors"), {mod.out, k});
      continue;
    }
    for (int s = 0; s < 2; ++s) {
      const char* side = s == 0 ? "lora_A" : "lora_B";
      const auto m = s == 0 ? mod.in : mod.out, p = mod.basis[s];
      check(bundle_tensor_name(mod.path, side, "mean"), {m, mod.rank});
      if (p == 0) continue;  // the mean alone
      check(bundle_tensor_name(mod.path, side, "basis"), {m, mod.rank, p});
      check(bundle_tensor_name(mod.path, side, "coef"), {m, p, n});
    }
  }
}

}  // namespace revmerge
