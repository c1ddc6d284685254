#include "merge_config.hpp"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "merge_config_yaml.hpp"
#include "revmerge/error.hpp"

namespace fs = std::filesystem;

namespace revmerge::cli {
namespace {

template <class T>
T scalar(const YAML::Node& node, const std::string& where) {
  if (!node.IsScalar())
    throw format_error(where + " must be a single value (gradients and filters are accepted for "
                               "weight, density, gamma, epsilon, lambda, t and select_topk only)");
  try {
    return node.as<T>();
  } catch (const YAML::Exception&) {
    throw format_error(where + " has the wrong type");
  }
}

// One number, a gradient [a, b, ...], or filters: {filter, value} or a list of them, each value
// a number or a gradient (mergekit's ParameterSetting, for numeric parameters).
ParameterSetting setting(const YAML::Node& node, const std::string& where) {
  const auto values = [&](const YAML::Node& v, const std::string& w) {
    std::vector<double> out;
    if (v.IsScalar()) {
      out.push_back(scalar<double>(v, w));
    } else if (v.IsSequence() && v.size() > 0) {
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (!v[i].IsScalar()) throw format_error(w + "[" + std::to_string(i) + "] must be a number");
        out.push_back(scalar<double>(v[i], w + "[" + std::to_string(i) + "]"));
      }
    } else {
      throw format_error(w + " must be a number or a non-empty list of numbers (a gradient)");
    }
    return out;
  };
  const auto condition = [&](const YAML::Node& m, const std::string& w) {
    ParameterSetting::Condition c;
    bool has_value = false;
    for (const auto& kv : m) {
      const auto k = scalar<std::string>(kv.first, w + " key");
      if (k == "filter") c.filter = scalar<std::string>(kv.second, w + ".filter");
      else if (k == "value") c.values = values(kv.second, w + ".value"), has_value = true;
      else throw format_error(w + ": unknown key '" + k + "' (expected filter, value)");
    }
    if (!has_value) throw format_error(w + ": missing 'value'");
    return c;
  };
  ParameterSetting s;
  if (node.IsMap()) {
    s.conditions.push_back(condition(node, where));
  } else if (node.IsSequence() && node.size() > 0 && node[0].IsMap()) {
    for (std::size_t i = 0; i < node.size(); ++i) {
      const auto w = where + "[" + std::to_string(i) + "]";
      if (!node[i].IsMap()) throw format_error(w + " must be a mapping {filter, value} like the others");
      s.conditions.push_back(condition(node[i], w));
    }
  } else {
    s.conditions.push_back({"", values(node, where)});
  }
  return s;
}

bool is_per_model_parameter(const std::string& key) {
  return key == "weight" || key == "density" || key == "gamma" || key == "epsilon" || key == "scale";
}

bool is_numeric_parameter(const std::string& key) {
  return is_per_model_parameter(key) || key == "lambda" || key == "t" || key == "select_topk";
}

// A slice's or a source's parameters: numeric ones only, each as a per-tensor setting.
ParameterSettings numeric_settings(const YAML::Node& node, const std::string& where, bool per_model) {
  if (!node.IsMap()) throw format_error(where + " must be a mapping");
  ParameterSettings out;
  for (const auto& kv : node) {
    const auto k = scalar<std::string>(kv.first, where + " key");
    if (per_model ? !is_per_model_parameter(k) : !is_numeric_parameter(k))
      throw format_error(where + "." + k + ": not a " + (per_model ? "per-model" : "per-slice") +
                         " parameter revmerge takes (" +
                         (per_model ? "weight, density, gamma, epsilon, scale"
                                    : "weight, density, gamma, epsilon, scale, lambda, t, select_topk") + ")");
    out[k] = setting(kv.second, where + "." + k);
  }
  return out;
}

// mergekit's dtype names and revmerge's.
struct Reader {
  std::string file;
  fs::path dir;
  MergeConfig c;
  /// Folders other documents of the file write (mergekit-mega): they exist by the time this
  /// document runs.
  std::set<fs::path> pending = {};

  // A mergekit model reference: a folder, or MODEL+LORA (the model with a PEFT adapter merged
  // into it; a path that exists as written is a path, even with a '+' in it). The reference's
  // path stands for the merged model; `with_lora` says what it is made of.
  fs::path model_reference(const YAML::Node& v, const std::string& where) {
    const auto text = scalar<std::string>(v, where);
    const auto path = dir / text;
    std::error_code ec;
    if (text.find('+') == std::string::npos || fs::exists(path, ec)) return path;
    const auto parts = model_with_lora_parts(text, dir);
    if (!parts)
      throw format_error(where + ": '" + text + "' holds more than one '+' (mergekit's MODEL+LORA "
                         "joins one model and one LoRA adapter)");
    const auto& w = *parts;
    for (const auto& [part, what] : {std::pair{w.model, "model"}, std::pair{w.adapter, "LoRA adapter"}})
      if (!exists(part))
        throw io_error(where + ": '" + text + "' is MODEL+LORA, and its " + what + " " + part.string() +
                       " does not exist (paths in a config are relative to its folder)");
    c.with_lora[path] = w;
    return path;
  }
  // mergekit's tokenizer_source (or tokenizer.source): "base" or a model, not "union".
  void tokenizer_source(const YAML::Node& v, const std::string& where) {
    const auto text = scalar<std::string>(v, where);
    if (text == "union")
      throw unsupported_error(where + ": 'union' (a vocabulary merged from the models, embeddings "
                              "remapped) is not supported by revmerge; give 'base' or a model folder");
    c.tokenizer_source = text == "base" ? text : model_reference(v, where).string();
  }
  bool exists(const fs::path& path) const {
    std::error_code ec;
    return c.with_lora.count(path) > 0 || pending.count(path.lexically_normal()) > 0 || fs::exists(path, ec);
  }

  // Keys shared by the top level and mergekit's `parameters` block.
  bool method_parameter(const std::string& key, const YAML::Node& v, const std::string& where) {
    if (is_numeric_parameter(key) && !v.IsScalar()) c.tensor_parameters[key] = setting(v, where);
    else if (key == "weight") c.weight = scalar<double>(v, where);
    else if (key == "density") c.density = scalar<double>(v, where);
    else if (key == "gamma") c.gamma = scalar<double>(v, where);
    else if (key == "epsilon") c.epsilon = scalar<double>(v, where);
    else if (key == "scale") c.scale = scalar<double>(v, where);
    else if (key == "select_topk") c.select_topk = scalar<double>(v, where);
    else if (key == "nuslerp_flatten") c.nuslerp_flatten = scalar<bool>(v, where);
    else if (key == "nuslerp_row_wise") c.nuslerp_row_wise = scalar<bool>(v, where);
    else if (key == "normalize_weights") c.normalize_weights = scalar<bool>(v, where);
    else if (key == "filter_wise") c.filter_wise = scalar<bool>(v, where);
    else if (key == "eps") c.eps = scalar<double>(v, where);
    else if (key == "tol") c.tol = scalar<double>(v, where);
    else if (key == "max_iter") c.max_iter = scalar<std::int64_t>(v, where);
    else if (key == "r") c.ram_r = scalar<double>(v, where);
    else if (key == "alpha") c.ram_alpha = scalar<double>(v, where);
    else if (key == "lambda") c.lambda = scalar<double>(v, where);
    else if (key == "t") c.t = scalar<double>(v, where);
    else if (key == "normalize") c.normalize = scalar<bool>(v, where);
    else if (key == "rescale") c.rescale = scalar<bool>(v, where);
    else if (key == "int8_mask") scalar<bool>(v, where);  // a storage detail of mergekit's mask
    else if (key == "majority_sign_method")
      c.majority_sign = scalar<std::string>(v, where);
    else return false;
    return true;
  }

  void slice_list(const YAML::Node& list) {
    const auto where = file + ": 'slices'";
    if (!list.IsSequence() || list.size() == 0) throw format_error(where + " must be a non-empty list");
    for (std::size_t s = 0; s < list.size(); ++s) {
      const auto sw = file + ": slices[" + std::to_string(s) + "]";
      if (!list[s].IsMap()) throw format_error(sw + " must be a mapping with 'sources'");
      LayerSlice slice;
      for (const auto& kv : list[s]) {
        const auto k = scalar<std::string>(kv.first, sw + " key");
        if (k == "sources") {
          if (!kv.second.IsSequence() || kv.second.size() == 0)
            throw format_error(sw + ".sources must be a non-empty list");
          for (std::size_t i = 0; i < kv.second.size(); ++i)
            slice.sources.push_back(source(kv.second[i], sw + ".sources[" + std::to_string(i) + "]"));
        } else if (k == "base_model") {
          slice.base = model_reference(kv.second, sw + ".base_model");
        } else if (k == "parameters") {
          slice.parameters = numeric_settings(kv.second, sw + ".parameters", false);
        } else if (k == "residual_weight") {
          throw unsupported_error(sw + ".residual_weight: mergekit's residual_weight is not supported by revmerge");
        } else {
          throw format_error(sw + ": unknown key '" + k + "' (expected sources, base_model, parameters)");
        }
      }
      if (slice.sources.empty()) throw format_error(sw + ": missing 'sources'");
      c.slices.push_back(std::move(slice));
    }
  }

  SliceSource source(const YAML::Node& node, const std::string& where) {
    if (!node.IsMap()) throw format_error(where + " must be a mapping with 'model' and 'layer_range'");
    SliceSource src;
    bool range = false;
    for (const auto& kv : node) {
      const auto k = scalar<std::string>(kv.first, where + " key");
      if (k == "model") {
        src.model = model_reference(kv.second, where + ".model");
      } else if (k == "layer_range") {
        if (!kv.second.IsSequence() || kv.second.size() != 2)
          throw format_error(where + ".layer_range must be [first, end]");
        src.first = scalar<std::int64_t>(kv.second[0], where + ".layer_range[0]");
        src.end = scalar<std::int64_t>(kv.second[1], where + ".layer_range[1]");
        range = true;
      } else if (k == "parameters") {
        src.parameters = numeric_settings(kv.second, where + ".parameters", true);
      } else {
        throw format_error(where + ": unknown key '" + k + "' (expected model, layer_range, parameters)");
      }
    }
    if (src.model.empty()) throw format_error(where + ": missing 'model'");
    if (!range) throw format_error(where + ": missing 'layer_range'");
    if (!exists(src.model))
      throw io_error(where + ".model: " + src.model.string() +
                     " does not exist (paths in a config are relative to its folder)");
    return src;
  }

  void task_list(const YAML::Node& list, const std::string& key, bool mergekit) {
    const auto where = file + ": '" + key + "'";
    if (!list.IsSequence()) throw format_error(where + " must be a list");
    const std::string path_key = mergekit ? "model" : "adapter";
    std::size_t i = 0;
    for (const auto& t : list) {
      const auto tw = file + ": " + key + "[" + std::to_string(i++) + "]";
      if (!t.IsMap()) throw format_error(tw + " must be a mapping with '" + path_key + "'");
      TaskSource task;
      std::optional<double> weight, density, gamma, epsilon, scale;
      ParameterSettings varying;
      for (const auto& kv : t) {
        const auto k = scalar<std::string>(kv.first, tw + " key");
        if (k == "name" && !mergekit) {
          task.name = scalar<std::string>(kv.second, tw + ".name");
        } else if (k == path_key) {
          task.adapter = mergekit ? model_reference(kv.second, tw + "." + k)
                                  : dir / scalar<std::string>(kv.second, tw + "." + k);
        } else if (k == "weight" && !mergekit) {
          weight = scalar<double>(kv.second, tw + ".weight");
        } else if (k == "density" && !mergekit) {
          density = scalar<double>(kv.second, tw + ".density");
        } else if (k == "parameters" && mergekit) {
          if (!kv.second.IsMap()) throw format_error(tw + ".parameters must be a mapping");
          for (const auto& p : kv.second) {
            const auto pk = scalar<std::string>(p.first, tw + ".parameters key");
            const auto pw = tw + ".parameters." + pk;
            if (is_per_model_parameter(pk) && !p.second.IsScalar())
              varying[pk] = setting(p.second, pw);
            else if (pk == "weight") weight = scalar<double>(p.second, pw);
            else if (pk == "density") density = scalar<double>(p.second, pw);
            else if (pk == "gamma") gamma = scalar<double>(p.second, pw);
            else if (pk == "epsilon") epsilon = scalar<double>(p.second, pw);
            else if (pk == "scale") scale = scalar<double>(p.second, pw);
            else throw format_error(pw + ": unknown per-model parameter (expected weight, density, "
                                         "gamma, epsilon, scale)");
          }
        } else {
          throw format_error(tw + ": unknown key '" + k + "' (expected " +
                             (mergekit ? "model, parameters" : "name, adapter, weight, density") + ")");
        }
      }
      if (task.adapter.empty()) throw format_error(tw + ": missing '" + path_key + "'");
      if (!exists(task.adapter))
        throw io_error(tw + "." + path_key + ": " + task.adapter.string() +
                       " does not exist (paths in a config are relative to its folder)");
      // mergekit lists the base among the models; it is the base, not a task.
      if (mergekit && c.base && fs::weakly_canonical(task.adapter) == fs::weakly_canonical(*c.base))
        continue;
      if (const auto w = c.with_lora.find(task.adapter); task.name.empty() && w != c.with_lora.end())
        task.name = model_with_lora_name(w->second);
      if (task.name.empty()) task.name = task_name_from_path(task.adapter);
      c.tasks.push_back(std::move(task));
      c.task_weights.push_back(weight);
      c.task_densities.push_back(density);
      c.task_gammas.push_back(gamma);
      c.task_epsilons.push_back(epsilon);
      c.task_tensor_parameters.push_back(std::move(varying));
      c.task_scales.push_back(scale);
    }
  }
};

// Where a parameter varies by tensor anywhere, its plain values join the per-tensor settings, so
// that a model's own value keeps its precedence over the config's value for all.
void move_plain_values_of_varying_parameters(MergeConfig& c) {
  const auto plain = [](double v) { return ParameterSetting{{{"", {v}}}}; };
  for (const auto& [key, all, own] :
       {std::tuple{"weight", &c.weight, &c.task_weights}, std::tuple{"density", &c.density, &c.task_densities},
        std::tuple{"gamma", &c.gamma, &c.task_gammas}, std::tuple{"epsilon", &c.epsilon, &c.task_epsilons},
        std::tuple{"scale", &c.scale, &c.task_scales}}) {
    bool varies = c.tensor_parameters.count(key) > 0;
    for (const auto& s : c.task_tensor_parameters) varies = varies || s.count(key) > 0;
    if (!varies) continue;
    if (*all && !c.tensor_parameters.count(key)) c.tensor_parameters[key] = plain(**all);
    all->reset();
    for (std::size_t i = 0; i < own->size(); ++i)
      if ((*own)[i]) {
        c.task_tensor_parameters[i][key] = plain(*(*own)[i]);
        (*own)[i].reset();
      }
  }
  for (const auto& [key, field] : {std::pair{"lambda", &c.lambda}, std::pair{"t", &c.t},
                                   std::pair{"select_topk", &c.select_topk}})
    if (c.tensor_parameters.count(key)) field->reset();
}

}  // namespace

std::string task_name_from_path(const fs::path& adapter) {
  auto p = adapter;
  if (p.filename().empty()) p = p.parent_path();  // "adapters/qa/"
  return p.filename().string();
}

std::optional<ModelWithLora> model_with_lora_parts(const std::string& text, const fs::path& dir) {
  const auto plus = text.find('+');
  if (plus == std::string::npos || text.find('+', plus + 1) != std::string::npos) return std::nullopt;
  return ModelWithLora{(dir / text.substr(0, plus)).lexically_normal(),
                       (dir / text.substr(plus + 1)).lexically_normal()};
}

std::string model_with_lora_name(const ModelWithLora& w) {
  return task_name_from_path(w.model) + "+" + task_name_from_path(w.adapter);
}

TaskSource task_from_argument(const std::string& argument) {
  const auto eq = argument.find('=');
  std::error_code ec;
  if (eq == std::string::npos || eq == 0 || fs::exists(argument, ec) ||
      argument.substr(0, eq).find('/') != std::string::npos)
    return {task_name_from_path(argument), argument};
  return {argument.substr(0, eq), argument.substr(eq + 1)};
}

std::vector<MergeConfig> read_merge_configs(const fs::path& path) {
  const auto file = path.string();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw io_error(file + ": no such config file");
  const auto size = fs::file_size(path, ec);
  if (ec) throw io_error(file + ": cannot read: " + ec.message());
  if (size > kMaxConfigBytes)
    throw format_error(file + ": " + std::to_string(size) + " bytes; a merge config is at most " +
                       std::to_string(kMaxConfigBytes) + " bytes (is this the right file?)");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in) throw io_error(file + ": cannot read");
  return parse_merge_configs(text.str(), path);
}

namespace {

MergeConfig parse_document(const YAML::Node& root, const std::string& text, const fs::path& path,
                           const std::string& file, std::set<fs::path> pending) {
  Reader r{file, path.parent_path(), {}, std::move(pending)};
  std::size_t nodes = 0;
  check_shape(root, 0, nodes, file);
  if (!root.IsMap()) throw format_error(file + ": expected a mapping with a 'tasks' or 'models' list");
  auto& c = r.c;
  c.file = path.string();
  c.text = text;
  // The base first: mergekit's model list may name it.
  if (root["base_model"]) c.base = r.model_reference(root["base_model"], file + ": 'base_model'");
  std::optional<std::string> out_dtype;
  for (const auto& kv : root) {
    const auto key = scalar<std::string>(kv.first, file + ": a key");
    const auto where = file + ": '" + key + "'";
    const auto& v = kv.second;
    if (key == "method" || key == "merge_method") {
      c.method = scalar<std::string>(v, where);
    } else if (key == "basis") {
      c.basis = scalar<std::int64_t>(v, where);
    } else if (key == "dtype") {
      c.dtype = scalar<std::string>(v, where);
    } else if (key == "out_dtype") {
      out_dtype = scalar<std::string>(v, where);
    } else if (key == "out") {
      c.out = r.dir / scalar<std::string>(v, where);
    } else if (key == "base" || key == "base_model") {
      c.base = r.dir / scalar<std::string>(v, where);
    } else if (key == "mode") {
      c.mode = scalar<std::string>(v, where);
    } else if (key == "rank") {
      c.rank = scalar<std::int64_t>(v, where);
    } else if (key == "seed") {
      c.seed = scalar<std::int64_t>(v, where);
    } else if (key == "storage") {
      c.storage = scalar<std::string>(v, where);
    } else if (key == "max_error") {
      c.max_error = scalar<double>(v, where);
    } else if (key == "objective") {
      c.objective = scalar<std::string>(v, where);
    } else if (key == "tasks" || key == "models") {
      r.task_list(v, key, key == "models");
    } else if (key == "parameters") {
      if (!v.IsMap()) throw format_error(where + " must be a mapping");
      for (const auto& p : v) {
        const auto pk = scalar<std::string>(p.first, where + " key");
        if (!r.method_parameter(pk, p.second, file + ": parameters." + pk))
          throw format_error(file + ": parameters." + pk + ": unknown parameter (expected weight, "
                             "density, gamma, epsilon, select_topk, lambda, t, normalize, rescale, int8_mask, "
                             "majority_sign_method, nuslerp_flatten, nuslerp_row_wise, "
                             "normalize_weights, eps, max_iter, tol, r, alpha, filter_wise)");
      }
    } else if (r.method_parameter(key, v, where)) {
    } else if (key == "slices") {
      r.slice_list(v);
    } else if (key == "tokenizer_source") {
      if (root["tokenizer"]) throw format_error(file + ": 'tokenizer_source' and 'tokenizer' both given; mergekit takes one");
      r.tokenizer_source(kv.second, where);
    } else if (key == "tokenizer") {
      // mergekit's newer block: its `source` is tokenizer_source; new tokens and padding the
      // vocabulary would resize the embeddings, which revmerge does not do.
      if (!v.IsMap()) throw format_error(where + " must be a mapping with 'source'");
      for (const auto& t : v) {
        const auto tk = scalar<std::string>(t.first, where + " key");
        if (tk == "source") r.tokenizer_source(t.second, where + ".source");
        else if (tk == "tokens" || tk == "pad_to_multiple_of")
          throw unsupported_error(where + "." + tk + ": mergekit's '" + tk + "' changes the vocabulary and "
                                  "resizes the embeddings, which revmerge does not do");
        else throw format_error(where + ": unknown key '" + tk + "' (expected source, tokens, pad_to_multiple_of)");
      }
    } else if (key == "chat_template") {
      c.chat_template = scalar<std::string>(kv.second, where);
    } else if (key == "modules") {
      throw unsupported_error(where + ": mergekit's '" + key + "' is not supported by revmerge");
    } else if (key == "out_path") {  // mergekit-mega's name for it
      c.out = r.dir / scalar<std::string>(v, where);
    } else {
      throw format_error(file + ": unknown key '" + key +
                         "' (expected method, basis, dtype, out, tasks, base, mode, rank, seed, "
                         "storage, max_error, objective, "
                         "weight, density, gamma, epsilon, select_topk, lambda, t, normalize, "
                         "rescale, majority_sign_method, or "
                         "mergekit's merge_method, base_model, models, slices, parameters, out_dtype, "
                         "tokenizer_source, chat_template, out_path)");
    }
  }
  if (out_dtype) c.dtype = out_dtype;  // revmerge computes in f32; out_dtype is what is written
  if (!c.slices.empty() && !c.tasks.empty())
    throw format_error(file + ": 'slices' and '" + (root["models"] ? "models" : "tasks") +
                       "' both given; mergekit takes one of them");
  // With slices the tasks are each slice's sources: the config's values for all of them are
  // settings beneath the sources' and the slices' own.
  if (!c.slices.empty())
    for (const auto& [key, value] : {std::pair{"weight", &c.weight}, std::pair{"density", &c.density},
                                     std::pair{"gamma", &c.gamma}, std::pair{"epsilon", &c.epsilon},
                                     std::pair{"scale", &c.scale}})
      if (*value) {
        c.tensor_parameters[key] = ParameterSetting{{{"", {**value}}}};
        value->reset();
      }
  move_plain_values_of_varying_parameters(c);
  return c;
}

}  // namespace

std::vector<MergeConfig> parse_merge_configs(const std::string& text, const fs::path& path) {
  const auto file = path.string();
  const auto documents = load_documents(text, file);
  if (documents.size() == 1) return {parse_document(documents.front().root, text, path, file, {})};
  // mergekit-mega: each document a merge into its out_path, read by later ones.
  std::set<fs::path> outputs;
  for (const auto& d : documents)
    if (d.root.IsMap())
      for (const char* key : {"out_path", "out"})
        if (d.root[key] && d.root[key].IsScalar())
          outputs.insert((path.parent_path() / d.root[key].as<std::string>()).lexically_normal());
  std::vector<MergeConfig> configs;
  for (std::size_t i = 0; i < documents.size(); ++i)
    configs.push_back(parse_document(documents[i].root, documents[i].text, path,
                                     file + " (document " + std::to_string(i + 1) + " of " +
                                         std::to_string(documents.size()) + ")",
                                     outputs));
  return configs;
}

MergeConfig parse_merge_config(const std::string& text, const fs::path& path) {
  auto configs = parse_merge_configs(text, path);
  if (configs.size() > 1)
    throw format_error(path.string() + ": holds " + std::to_string(configs.size()) +
                       " YAML documents (a mergekit-mega config): one merge was asked for");
  return std::move(configs.front());
}

}  // namespace revmerge::cli
