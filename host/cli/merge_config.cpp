#include "merge_config.hpp"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <map>
#include <sstream>

#include "revmerge/error.hpp"

namespace fs = std::filesystem;

namespace revmerge::cli {
namespace {

template <class T>
T scalar(const YAML::Node& node, const std::string& where) {
  if (!node.IsScalar())
    throw format_error(where + " must be a single value (per-layer gradients and tensor filters "
                               "are not supported)");
  try {
    return node.as<T>();
  } catch (const YAML::Exception&) {
    throw format_error(where + " has the wrong type");
  }
}

// mergekit's dtype names and revmerge's.
struct Reader {
  std::string file;
  fs::path dir;
  MergeConfig c;

  // Keys shared by the top level and mergekit's `parameters` block.
  bool method_parameter(const std::string& key, const YAML::Node& v, const std::string& where) {
    if (key == "weight") c.weight = scalar<double>(v, where);
    else if (key == "density") c.density = scalar<double>(v, where);
    else if (key == "gamma") c.gamma = scalar<double>(v, where);
    else if (key == "epsilon") c.epsilon = scalar<double>(v, where);
    else if (key == "select_topk") c.select_topk = scalar<double>(v, where);
    else if (key == "nuslerp_flatten") c.nuslerp_flatten = scalar<bool>(v, where);
    else if (key == "nuslerp_row_wise") c.nuslerp_row_wise = scalar<bool>(v, where);
    else if (key == "normalize_weights") c.normalize_weights = scalar<bool>(v, where);
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

  void task_list(const YAML::Node& list, const std::string& key, bool mergekit) {
    const auto where = file + ": '" + key + "'";
    if (!list.IsSequence()) throw format_error(where + " must be a list");
    const std::string path_key = mergekit ? "model" : "adapter";
    std::size_t i = 0;
    for (const auto& t : list) {
      const auto tw = file + ": " + key + "[" + std::to_string(i++) + "]";
      if (!t.IsMap()) throw format_error(tw + " must be a mapping with '" + path_key + "'");
      TaskSource task;
      std::optional<double> weight, density, gamma, epsilon;
      for (const auto& kv : t) {
        const auto k = scalar<std::string>(kv.first, tw + " key");
        if (k == "name" && !mergekit) {
          task.name = scalar<std::string>(kv.second, tw + ".name");
        } else if (k == path_key) {
          task.adapter = dir / scalar<std::string>(kv.second, tw + "." + k);
        } else if (k == "weight" && !mergekit) {
          weight = scalar<double>(kv.second, tw + ".weight");
        } else if (k == "density" && !mergekit) {
          density = scalar<double>(kv.second, tw + ".density");
        } else if (k == "parameters" && mergekit) {
          if (!kv.second.IsMap()) throw format_error(tw + ".parameters must be a mapping");
          for (const auto& p : kv.second) {
            const auto pk = scalar<std::string>(p.first, tw + ".parameters key");
            const auto pw = tw + ".parameters." + pk;
            if (pk == "weight") weight = scalar<double>(p.second, pw);
            else if (pk == "density") density = scalar<double>(p.second, pw);
            else if (pk == "gamma") gamma = scalar<double>(p.second, pw);
            else if (pk == "epsilon") epsilon = scalar<double>(p.second, pw);
            else throw format_error(pw + ": unknown per-model parameter (expected weight, density, "
                                         "gamma, epsilon)");
          }
        } else {
          throw format_error(tw + ": unknown key '" + k + "' (expected " +
                             (mergekit ? "model, parameters" : "name, adapter, weight, density") + ")");
        }
      }
      if (task.adapter.empty()) throw format_error(tw + ": missing '" + path_key + "'");
      if (std::error_code ec; !fs::exists(task.adapter, ec))
        throw io_error(tw + "." + path_key + ": " + task.adapter.string() +
                       " does not exist (paths in a config are relative to its folder)");
      // mergekit lists the base among the models; it is the base, not a task.
      if (mergekit && c.base && fs::weakly_canonical(task.adapter) == fs::weakly_canonical(*c.base))
        continue;
      if (task.name.empty()) task.name = task_name_from_path(task.adapter);
      c.tasks.push_back(std::move(task));
      c.task_weights.push_back(weight);
      c.task_densities.push_back(density);
      c.task_gammas.push_back(gamma);
      c.task_epsilons.push_back(epsilon);
    }
  }
};

// What a merge config can hold: a list of tasks with a few keys each. A file beyond these is
// not a merge config (or is made to exhaust the reader), and is refused before it is parsed
// (size) or before it is used (depth, node count: aliases can make a small file a huge tree).
constexpr std::uintmax_t kMaxConfigBytes = std::uintmax_t{1} << 20;
constexpr int kMaxConfigDepth = 8;
constexpr std::size_t kMaxConfigNodes = 200000;

void check_shape(const YAML::Node& node, int depth, std::size_t& nodes, const std::string& file) {
  if (depth > kMaxConfigDepth)
    throw format_error(file + ": nested more than " + std::to_string(kMaxConfigDepth) +
                       " levels deep; a merge config needs 4 (tasks, a task, its parameters, a value)");
  if (++nodes > kMaxConfigNodes)
    throw format_error(file + ": holds more than " + std::to_string(kMaxConfigNodes) +
                       " values (counting each use of an alias); not a merge config");
  if (node.IsSequence()) {
    for (const auto& v : node) check_shape(v, depth + 1, nodes, file);
  } else if (node.IsMap()) {
    for (const auto& kv : node) {
      check_shape(kv.first, depth + 1, nodes, file);
      check_shape(kv.second, depth + 1, nodes, file);
    }
  }
}

}  // namespace

std::string task_name_from_path(const fs::path& adapter) {
  auto p = adapter;
  if (p.filename().empty()) p = p.parent_path();  // "adapters/qa/"
  return p.filename().string();
}

TaskSource task_from_argument(const std::string& argument) {
  const auto eq = argument.find('=');
  std::error_code ec;
  if (eq == std::string::npos || eq == 0 || fs::exists(argument, ec) ||
      argument.substr(0, eq).find('/') != std::string::npos)
    return {task_name_from_path(argument), argument};
  return {argument.substr(0, eq), argument.substr(eq + 1)};
}

MergeConfig read_merge_config(const fs::path& path) {
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
  return parse_merge_config(text.str(), path);
}

MergeConfig parse_merge_config(const std::string& text, const fs::path& path) {
  Reader r{path.string(), path.parent_path(), {}};
  const auto& file = r.file;
  if (text.size() > kMaxConfigBytes)
    throw format_error(file + ": " + std::to_string(text.size()) +
                       " bytes; a merge config is at most " + std::to_string(kMaxConfigBytes) + " bytes");
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::DeepRecursion& e) {
    throw format_error(file + ": nested more than 2000 levels deep (line " +
                       std::to_string(e.mark.line + 1) +
                       "); a merge config needs 4 (tasks, a task, its parameters, a value)");
  } catch (const YAML::Exception& e) {
    throw format_error(file + ": not valid YAML/JSON: " + e.what());
  }
  std::size_t nodes = 0;
  check_shape(root, 0, nodes, file);
  if (!root.IsMap()) throw format_error(file + ": expected a mapping with a 'tasks' or 'models' list");
  auto& c = r.c;
  c.file = file;
  c.text = text;
  // The base first: mergekit's model list may name it.
  if (root["base_model"]) c.base = r.dir / scalar<std::string>(root["base_model"], file + ": 'base_model'");
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
                             "normalize_weights, eps, max_iter, tol, r, alpha)");
      }
    } else if (r.method_parameter(key, v, where)) {
    } else if (key == "slices" || key == "tokenizer_source" || key == "tokenizer" ||
               key == "chat_template" || key == "modules") {
      throw unsupported_error(where + ": mergekit's '" + key + "' is not supported by revmerge");
    } else {
      throw format_error(file + ": unknown key '" + key +
                         "' (expected method, basis, dtype, out, tasks, base, mode, rank, seed, "
                         "weight, density, gamma, epsilon, select_topk, lambda, t, normalize, "
                         "rescale, majority_sign_method, or "
                         "mergekit's merge_method, base_model, models, parameters, out_dtype)");
    }
  }
  if (out_dtype) c.dtype = out_dtype;  // revmerge computes in f32; out_dtype is what is written
  return c;
}

}  // namespace revmerge::cli
