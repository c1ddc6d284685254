// mergekit's per-tensor parameters: filters on the tensor's name and gradients over the layers,
// resolved into the plain options a driver merges one tensor with.
#include <algorithm>
#include <cmath>

#include "methods/classic/classic_internal.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"

namespace revmerge {

std::optional<double> ParameterSetting::at(const std::string& tensor, double t) const {
  for (const auto& c : conditions) {
    if (!c.filter.empty() && c.filter != "*" && tensor.find(c.filter) == std::string::npos) continue;
    if (c.values.empty()) return std::nullopt;
    if (c.values.size() == 1) return c.values[0];
    // mergekit: position t · (k − 1) among the k values, linear between its two neighbours.
    const double scaled = t * static_cast<double>(c.values.size() - 1);
    const auto i0 = static_cast<std::size_t>(scaled);
    const auto i1 = std::min(c.values.size() - 1, i0 + 1);
    const double frac = scaled - static_cast<double>(i0);
    return (1 - frac) * c.values[i0] + frac * c.values[i1];
  }
  return std::nullopt;
}

bool has_tensor_parameters(const ClassicMergeOptions& o) {
  if (!o.tensor_parameters.empty()) return true;
  return std::any_of(o.task_tensor_parameters.begin(), o.task_tensor_parameters.end(),
                     [](const ParameterSettings& s) { return !s.empty(); });
}

bool is_set_per_tensor(const ClassicMergeOptions& o, const std::string& key) {
  if (o.tensor_parameters.count(key)) return true;
  return std::any_of(o.task_tensor_parameters.begin(), o.task_tensor_parameters.end(),
                     [&](const ParameterSettings& s) { return s.count(key) > 0; });
}

double layer_position(const std::string& tensor, std::int64_t layers) {
  const int layer = split_module_path(tensor).first;
  if (layer < 0) return 0.0;  // embeddings, final norm, head: mergekit plans them at t = 0
  return layers > 1 ? static_cast<double>(layer) / static_cast<double>(layers - 1) : 1.0;
}

ClassicMergeOptions options_for_tensor(const ClassicMergeOptions& o, const std::string& tensor, double t) {
  if (!has_tensor_parameters(o)) return o;
  ClassicMergeOptions r = o;
  const std::size_t n = o.tasks.size();
  const auto resolve = [&](const std::string& key, std::size_t task) -> std::optional<double> {
    if (task < o.task_tensor_parameters.size()) {
      const auto it = o.task_tensor_parameters[task].find(key);
      if (it != o.task_tensor_parameters[task].end())
        if (const auto v = it->second.at(tensor, t)) return v;
    }
    const auto it = o.tensor_parameters.find(key);
    return it == o.tensor_parameters.end() ? std::nullopt : it->second.at(tensor, t);
  };
  const bool ram = o.method == ClassicMethod::ram || o.method == ClassicMethod::ramplus_tl;
  for (const auto& [key, field, fallback] :
       {std::tuple{"weight", &r.weights, 1.0}, std::tuple{"density", &r.densities, 1.0},
        std::tuple{"gamma", &r.gammas, 0.01}, std::tuple{"epsilon", &r.epsilons, ram ? 1e-5 : 0.15},
        std::tuple{"scale", &r.scales, 1.0}}) {
    if (!is_set_per_tensor(o, key)) continue;
    std::vector<std::optional<double>> v(n);
    bool any = false;
    for (std::size_t i = 0; i < n; ++i) any = (v[i] = resolve(key, i)).has_value() || any;
    field->clear();
    if (any)
      for (const auto& x : v) field->push_back(x.value_or(fallback));
  }
  for (const auto& [key, field] : {std::pair{"lambda", &r.lambda}, std::pair{"t", &r.t},
                                   std::pair{"select_topk", &r.select_topk}})
    if (is_set_per_tensor(o, key)) *field = resolve(key, n);
  r.tensor_parameters.clear();
  r.task_tensor_parameters.clear();
  return r;
}

void check_tensor_parameters(const ClassicMergeOptions& o, const HfModel& layout) {
  for (const auto& [key, setting] : o.tensor_parameters)
    if (key != "weight" && key != "density" && key != "gamma" && key != "epsilon" &&
        key != "scale" && key != "lambda" && key != "t" && key != "select_topk")
      throw usage_error("parameter '" + key + "' cannot vary by tensor");
  for (const auto& s : o.task_tensor_parameters)
    for (const auto& [key, setting] : s)
      if (key != "weight" && key != "density" && key != "gamma" && key != "epsilon" && key != "scale")
        throw usage_error("parameter '" + key + "' is not a per-model parameter");
  if (!has_tensor_parameters(o)) return;
  // Every tensor's values are checked before anything is merged.
  const auto layers = layout.config().num_hidden_layers;
  for (const auto& ct : layout.checkpoint().tensors()) {
    const auto& name = ct.info->name;
    const auto to = options_for_tensor(o, name, layer_position(name, layers));
    try {
      task_parameters(to, to.tasks.size());
      if (to.t && !std::isfinite(*to.t)) throw usage_error("--t: must be a finite number");
      if (to.select_topk && !(*to.select_topk >= 0 && *to.select_topk <= 1))
        throw usage_error("--select-topk: outside [0, 1]");
    } catch (const usage_error& e) {
      throw usage_error(std::string(e.what()) + " (tensor '" + name + "', from the config's per-tensor values)");
    }
  }
}

}  // namespace revmerge
