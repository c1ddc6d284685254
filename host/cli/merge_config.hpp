#pragma once
// The merge config file (YAML or JSON): tasks with their adapters, and optional defaults for
// the command-line options.
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "revmerge/rmm.hpp"

namespace revmerge::cli {

struct MergeConfig {
  std::optional<std::string> method;
  std::optional<std::int64_t> basis;
  std::optional<std::string> dtype;
  std::optional<std::filesystem::path> out;
  std::vector<TaskSource> tasks;  ///< adapter paths resolved against the config's folder
};

/// Reads `path`; unknown keys, missing names or adapters, and wrong types are format_errors
/// naming the file and the key.
MergeConfig read_merge_config(const std::filesystem::path& path);

/// Task name for an adapter given on the command line: its folder's name.
std::string task_name_from_path(const std::filesystem::path& adapter);

}  // namespace revmerge::cli
