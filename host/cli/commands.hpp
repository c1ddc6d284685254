#pragma once
// Each subcommand registers its options and its action on the CLI11 app.
#include <CLI/CLI.hpp>

namespace revmerge::cli {

void add_info_command(CLI::App& app);
void add_devices_command(CLI::App& app);
void add_merge_command(CLI::App& app);
void add_revert_command(CLI::App& app);
void add_add_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_compare_command(CLI::App& app);
void add_compress_command(CLI::App& app);
void add_bench_command(CLI::App& app);

/// What to say for a command line CLI11 refused: its message, made to name the command, with
/// "did you mean" for a mistyped command or option (host/cli/parse_errors.cpp).
std::string parse_error_message(const CLI::App& app, const CLI::ParseError& e, int argc,
                                char** argv);

}  // namespace revmerge::cli
