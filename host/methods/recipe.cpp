#include "methods/recipe.hpp"

#include <algorithm>

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

std::pair<std::string, std::string> model_card(const OutputRecipe& given, const RecipeRecord& record,
                                               const fs::path& base, const std::string& base_name) {
  // YAML strings in double quotes with JSON's escapes (a subset YAML reads the same).
  const auto quoted = [](const std::string& s) { return nlohmann::json(s).dump(); };
  std::string card = "---\nbase_model:\n";
  std::vector<std::string> listed;
  const auto list = [&](const fs::path& p) {
    const auto text = absolute_text(p);
    if (std::find(listed.begin(), listed.end(), text) != listed.end()) return;
    listed.push_back(text);
    card += "- " + quoted(text) + "\n";
  };
  if (!base.empty()) list(base);
  for (const auto& [name, path] : record.inputs) list(path);
  card += "library_name: transformers\ntags:\n- merge\n- revmerge\n---\n";
  card += "# " + (base.empty() ? std::string("merged model") : "merge of fine-tunes of " + base_name) + "\n\n";
  card += "This model was merged by revmerge " + std::string(REVMERGE_VERSION_STRING) +
          " with the `" + record.method + "` method (mergekit's definition; `revmerge_recipe.json` "
          "holds every parameter in effect).\n\n## Models merged\n\n";
  if (!base.empty()) card += "- base: `" + absolute_text(base) + "`\n";
  for (const auto& [name, path] : record.inputs) card += "- " + name + ": `" + absolute_text(path) + "`\n";
  card += "\n## Parameters\n\n";
  for (const auto& [key, value] : record.parameters) card += "- " + key + ": " + value + "\n";
  if (!given.config_text.empty()) {
    card += "\n## Configuration\n\n```yaml\n" + given.config_text;
    if (!given.config_text.ends_with('\n')) card += "\n";
    card += "```\n";
  } else if (!given.command.empty()) {
    card += "\n## Command\n\n```sh\n";
    for (std::size_t i = 0; i < given.command.size(); ++i) card += (i ? " " : "") + given.command[i];
    card += "\n```\n";
  }
  return {"README.md", card};
}

}  // namespace revmerge
