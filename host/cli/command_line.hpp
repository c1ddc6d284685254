#pragma once
// The command line as run, kept for the recipe every output records (revmerge_recipe.json).
#include <ostream>
#include <string>

#include "revmerge/recipe.hpp"

namespace revmerge::cli {

/// Where the commands print their results: std::cout, or the stream run_command_line was given.
std::ostream& report_out();
void set_report_out(std::ostream* stream);

/// Keeps argv (called once, by main).
void record_command_line(int argc, char** argv);

/// The recipe's caller part: the command line, and the config file with its text when given.
OutputRecipe output_recipe(const std::string& config_file = {}, const std::string& config_text = {});

}  // namespace revmerge::cli
