#pragma once
/// \file
/// What made an output, kept inside it. Every folder revmerge writes (a bundle, an adapter, a
/// full model) holds `revmerge_recipe.json`, as a mergekit output holds `mergekit_config.yml`:
/// revmerge's version, the method with every parameter in effect (defaults and seed included),
/// the inputs by name and absolute path, and — when the caller sets them — the command line as
/// run (with the working folder its relative paths start from) and the config file's path and
/// text. Enough to remake the output or audit it.
#include <filesystem>
#include <string>
#include <vector>

namespace revmerge {

inline constexpr const char* kRecipeName = "revmerge_recipe.json";

/// The caller's part of a recipe (the CLI fills it; a library caller may leave it empty).
struct OutputRecipe {
  std::vector<std::string> command;   ///< argv as run
  std::filesystem::path config_file;  ///< the config given with --config, if any
  std::string config_text;            ///< its text as read
};

}  // namespace revmerge
