#include "methods/recipe.hpp"

#include <nlohmann/json.hpp>

#include "revmerge/version.hpp"

namespace fs = std::filesystem;

namespace revmerge {
namespace {

// The path made absolute (what a recipe read from elsewhere needs), or as given if that fails.
std::string absolute_text(const fs::path& p) {
  std::error_code ec;
  const auto absolute = fs::absolute(p, ec);
  return (ec ? p : absolute.lexically_normal()).string();
}

}  // namespace

std::string recipe_text(const OutputRecipe& given, const RecipeRecord& record) {
  nlohmann::ordered_json j;
  j["revmerge_version"] = REVMERGE_VERSION_STRING;
  j["method"] = record.method;
  auto& parameters = j["parameters"] = nlohmann::ordered_json::object();
  for (const auto& [key, value] : record.parameters) parameters[key] = value;
  auto& inputs = j["inputs"] = nlohmann::ordered_json::array();
  for (const auto& [name, path] : record.inputs) inputs.push_back({{"name", name}, {"path", absolute_text(path)}});
  if (!given.command.empty()) {
    j["command"] = given.command;
    std::error_code ec;
    j["working_folder"] = fs::current_path(ec).string();  // the command's relative paths
  }
  if (!given.config_file.empty()) {
    j["config_file"] = absolute_text(given.config_file);
    j["config"] = given.config_text;
  }
  return j.dump(2) + "\n";
}

std::vector<std::pair<std::string, fs::path>> recipe_inputs(const std::vector<TaskSource>& tasks) {
  std::vector<std::pair<std::string, fs::path>> inputs;
  for (const auto& t : tasks) inputs.emplace_back(t.name, t.origin.empty() ? t.adapter : t.origin);
  return inputs;
}

std::pair<std::string, std::string> recipe_file(const OutputRecipe& given, const RecipeRecord& record) {
  return {kRecipeName, recipe_text(given, record)};
}

}  // namespace revmerge
