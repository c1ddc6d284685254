#include "merge_config.hpp"

#include <yaml-cpp/yaml.h>

#include "revmerge/error.hpp"

namespace fs = std::filesystem;

namespace revmerge::cli {
namespace {

template <class T>
T scalar(const YAML::Node& node, const std::string& where) {
  try {
    return node.as<T>();
  } catch (const YAML::Exception&) {
    throw format_error(where + " has the wrong type");
  }
}

}  // namespace

std::string task_name_from_path(const fs::path& adapter) {
  auto p = adapter;
  if (p.filename().empty()) p = p.parent_path();  // "adapters/qa/"
  return p.filename().string();
}

MergeConfig read_merge_config(const fs::path& path) {
  const auto file = path.string();
  if (!fs::is_regular_file(path)) throw io_error(file + ": no such config file");
  YAML::Node root;
  try {
    root = YAML::LoadFile(file);
  } catch (const YAML::Exception& e) {
    throw format_error(file + ": not valid YAML/JSON: " + e.what());
  }
  if (!root.IsMap()) throw format_error(file + ": expected a mapping with a 'tasks' list");
  MergeConfig c;
  const auto base = path.parent_path();
  for (const auto& kv : root) {
    const auto key = scalar<std::string>(kv.first, file + ": a key");
    const auto where = file + ": '" + key + "'";
    if (key == "method") {
      c.method = scalar<std::string>(kv.second, where);
    } else if (key == "basis") {
      c.basis = scalar<std::int64_t>(kv.second, where);
    } else if (key == "dtype") {
      c.dtype = scalar<std::string>(kv.second, where);
    } else if (key == "out") {
      c.out = base / scalar<std::string>(kv.second, where);
    } else if (key == "tasks") {
      if (!kv.second.IsSequence()) throw format_error(where + " must be a list");
      std::size_t i = 0;
      for (const auto& t : kv.second) {
        const auto tw = file + ": tasks[" + std::to_string(i++) + "]";
        if (!t.IsMap()) throw format_error(tw + " must be a mapping with 'adapter' (and 'name')");
        TaskSource task;
        for (const auto& tkv : t) {
          const auto tk = scalar<std::string>(tkv.first, tw + " key");
          if (tk == "name")
            task.name = scalar<std::string>(tkv.second, tw + ".name");
          else if (tk == "adapter")
            task.adapter = base / scalar<std::string>(tkv.second, tw + ".adapter");
          else
            throw format_error(tw + ": unknown key '" + tk + "' (expected name, adapter)");
        }
        if (task.adapter.empty()) throw format_error(tw + ": missing 'adapter'");
        if (task.name.empty()) task.name = task_name_from_path(task.adapter);
        c.tasks.push_back(std::move(task));
      }
    } else {
      throw format_error(file + ": unknown key '" + key +
                         "' (expected method, basis, dtype, out, tasks)");
    }
  }
  return c;
}

}  // namespace revmerge::cli
