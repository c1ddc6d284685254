#include "command_line.hpp"

#include <iostream>
#include <vector>

namespace revmerge::cli {
namespace {
std::vector<std::string> g_command;
std::ostream* g_out = nullptr;
}  // namespace

std::ostream& report_out() { return g_out ? *g_out : std::cout; }
void set_report_out(std::ostream* stream) { g_out = stream; }

void record_command_line(int argc, char** argv) { g_command.assign(argv, argv + argc); }

OutputRecipe output_recipe(const std::string& config_file, const std::string& config_text) {
  return {g_command, config_file, config_text};
}

}  // namespace revmerge::cli
