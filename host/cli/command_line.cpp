#include "command_line.hpp"

#include <vector>

namespace revmerge::cli {
namespace {
std::vector<std::string> g_command;
}  // namespace

void record_command_line(int argc, char** argv) { g_command.assign(argv, argv + argc); }

OutputRecipe output_recipe(const std::string& config_file, const std::string& config_text) {
  return {g_command, config_file, config_text};
}

}  // namespace revmerge::cli
