#pragma once
// One revmerge command line run in-process: what `main` does, and what the Python package's
// merge / revert / compare / run call, so both take the same options with the same messages.
#include <CLI/CLI.hpp>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "revmerge/peers.hpp"

namespace revmerge::cli {

/// The app with every subcommand registered.
void add_commands(CLI::App& app);

/// Parses and runs `args` (without the program name) as `revmerge args…`, what the command
/// prints (reports, --json, --help, --version) going to `out`; progress still goes to stderr. A
/// command line CLI11 refuses becomes usage_error with the message `main` prints; everything
/// else the command throws passes through. Calls from several threads take turns (the commands
/// keep their parsed options in statics).
void run_command_line(const std::vector<std::string>& args, std::ostream& out = std::cout);

/// The workers the commands run on (the MPI ranks `main` joined); null: this process alone.
/// Under several, `merge --method rmm` splits its modules across them and every other command
/// is refused (it would run once per worker).
void set_command_peers(Peers* peers);
Peers* command_peers();
/// Under several ranks, the GPU this rank takes where the command line names none: its rank
/// among its machine's ranks, modulo the GPUs it sees. Empty with one rank or no GPU.
std::optional<int> gpu_of_this_rank();

}  // namespace revmerge::cli
