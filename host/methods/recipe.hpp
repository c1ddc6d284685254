#pragma once
// revmerge_recipe.json: the caller's OutputRecipe plus what the method records about itself.
#include <string>
#include <utility>
#include <vector>

#include "revmerge/recipe.hpp"
#include "revmerge/rmm.hpp"

namespace revmerge {

struct RecipeRecord {
  std::string method;  ///< as the user names it: "rmm", "ties", "pt-svd", "revert"
  std::vector<std::pair<std::string, std::string>> parameters;  ///< every one in effect, in order
  std::vector<std::pair<std::string, std::filesystem::path>> inputs;  ///< (name, path)
};

/// The recipe's JSON text (paths made absolute).
std::string recipe_text(const OutputRecipe& given, const RecipeRecord& record);

/// The (name, path) inputs of a task list.
std::vector<std::pair<std::string, std::filesystem::path>> recipe_inputs(const std::vector<TaskSource>& tasks);

/// The recipe as the (file name, text) a writer's extra_files takes.
std::pair<std::string, std::string> recipe_file(const OutputRecipe& given, const RecipeRecord& record);

/// A merged model's README.md, a Hugging Face model card as mergekit writes one: front matter
/// naming the merged models (`base_model`) with the `merge` tag, then the method, the base, the
/// models and the config (or command) that made it; `base_name` titles it.
std::pair<std::string, std::string> model_card(const OutputRecipe& given, const RecipeRecord& record,
                                               const std::filesystem::path& base, const std::string& base_name);

}  // namespace revmerge
