#include "methods/lowrank/left_out.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "core/interrupt.hpp"
#include "revmerge/dtype.hpp"

namespace revmerge {
namespace {

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s;
  for (const auto d : shape) s += (s.empty() ? "" : " × ") + std::to_string(d);
  return s.empty() ? "a scalar" : s;
}

// Whether two tensors of one shape hold the same values: their bytes where the dtypes agree,
// else their values in f64; a block at a time, stopping at the first that differs.
bool same_values(const CheckpointTensor& a, const CheckpointTensor& b, const char* command) {
  const auto count = static_cast<std::uint64_t>(a.info->nbytes() / dtype_size(a.info->dtype));
  const auto bytes_a = a.file->bytes(*a.info), bytes_b = b.file->bytes(*b.info);
  constexpr std::uint64_t kBlock = 1 << 20;  // elements
  std::vector<double> va, vb;
  bool same = true;
  for (std::uint64_t at = 0; at < count && same; at += kBlock) {
    throw_if_interrupted(command);  // a 70b's embeddings are gigabytes
    const auto n = std::min(kBlock, count - at);
    if (a.info->dtype == b.info->dtype) {
      const auto size = dtype_size(a.info->dtype);
      same = std::memcmp(bytes_a.data() + at * size, bytes_b.data() + at * size, n * size) == 0;
    } else {
      va.resize(n), vb.resize(n);
      convert_to_f64(a.info->dtype, bytes_a.data() + at * dtype_size(a.info->dtype), va.data(), n);
      convert_to_f64(b.info->dtype, bytes_b.data() + at * dtype_size(b.info->dtype), vb.data(), n);
      same = va == vb;
    }
    a.file->evict_part(*a.info, at, n);
    b.file->evict_part(*b.info, at, n);
  }
  a.file->check_intact();
  b.file->check_intact();
  return same;
}

}  // namespace

std::vector<UncarriedTensor> changed_tensors_left_out(const HfModel& base, const HfModel& ft,
                                                    const std::set<std::string>& held, const char* command) {
  std::vector<UncarriedTensor> out;
  for (const auto& t : base.checkpoint().tensors()) {
    const auto& name = t.info->name;
    if (held.count(name)) continue;
    const auto* other = ft.checkpoint().find(name);
    if (!other) out.push_back({name, "only in the base"});
    else if (other->info->shape != t.info->shape)
      out.push_back({name, "shape " + shape_text(t.info->shape) + " → " + shape_text(other->info->shape)});
    else if (!same_values(t, *other, command)) out.push_back({name, "changed"});
  }
  for (const auto& t : ft.checkpoint().tensors())
    if (!held.count(t.info->name) && !base.checkpoint().find(t.info->name))
      out.push_back({t.info->name, "only in the fine-tune"});
  return out;
}

KeptWhole keep_changed_modules(const HfModel& ft, std::vector<UncarriedTensor>& left_out,
                               const std::set<std::string>& compressed) {
  KeptWhole kept;
  std::set<std::string> modules;
  std::map<std::string, std::string> why;  // a kept tensor's own reason
  std::vector<UncarriedTensor> still;
  for (auto& t : left_out) {
    const auto dot = t.tensor.rfind('.');
    const auto module = dot == std::string::npos ? std::string() : t.tensor.substr(0, dot);
    if (module.empty() || compressed.count(module) || t.why == "only in the base") {
      still.push_back(std::move(t));
      continue;
    }
    if (modules.insert(module).second) kept.modules.push_back(module);
    why[t.tensor] = t.why;
  }
  left_out = std::move(still);
  for (const auto& t : ft.checkpoint().tensors()) {
    const auto& name = t.info->name;
    const auto dot = name.rfind('.');
    if (dot == std::string::npos || !modules.count(name.substr(0, dot))) continue;
    const auto it = why.find(name);
    kept.tensors.push_back({name, it != why.end() ? it->second : "kept with its module"});
  }
  return kept;
}

std::string describe_left_out(const std::vector<UncarriedTensor>& left_out, std::size_t shown) {
  std::string s = std::to_string(left_out.size()) + (left_out.size() == 1 ? " tensor (" : " tensors (");
  for (std::size_t i = 0; i < std::min(shown, left_out.size()); ++i)
    s += (i ? ", " : "") + left_out[i].tensor + ": " + left_out[i].why;
  if (left_out.size() > shown) s += ", and " + std::to_string(left_out.size() - shown) + " more";
  return s + ")";
}

}  // namespace revmerge
