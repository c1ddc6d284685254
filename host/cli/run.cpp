#include "run.hpp"

#include <mutex>

#include "command_line.hpp"
#include "commands.hpp"
#include "revmerge/devices.hpp"
#include "revmerge/error.hpp"
#include "revmerge/version.hpp"

namespace revmerge::cli {

void add_commands(CLI::App& app) {
  app.description("revmerge " REVMERGE_VERSION_STRING
                  ": reversible merging (RMM) and classic merging of LoRA adapters and fine-tuned models");
  app.set_version_flag("--version", REVMERGE_VERSION_STRING);
  app.require_subcommand(1);
  add_info_command(app);
  add_merge_command(app);
  add_revert_command(app);
  add_add_command(app);
  add_inspect_command(app);
  add_compare_command(app);
  add_compress_command(app);
  add_bench_command(app);
  add_devices_command(app);
}

namespace {
Peers* peers_of_commands = nullptr;
}  // namespace

void set_command_peers(Peers* peers) { peers_of_commands = peers; }
Peers* command_peers() { return peers_of_commands; }

std::optional<int> gpu_of_this_rank() {
  if (!peers_of_commands || peers_of_commands->size() < 2) return std::nullopt;
  const auto gpus = probe_devices().gpus.size();
  if (gpus == 0) return std::nullopt;
  return peers_of_commands->node_rank() % static_cast<int>(gpus);
}

void run_command_line(const std::vector<std::string>& args, std::ostream& stream) {
  static std::mutex one_at_a_time;
  const std::lock_guard<std::mutex> hold(one_at_a_time);
  struct Restore {
    ~Restore() { set_report_out(nullptr); }
  } restore;
  set_report_out(&stream);
  std::vector<std::string> owned{"revmerge"};
  owned.insert(owned.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : owned) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int argc = static_cast<int>(owned.size());
  if (peers_of_commands && peers_of_commands->size() > 1 && !args.empty() && args[0] != "merge" &&
      args[0] != "compress" && args[0].rfind('-', 0) != 0)
    throw usage_error("revmerge " + args[0] + " runs in one process: start it without mpirun (under " +
                      "an MPI launcher `revmerge merge` and `revmerge compress` run, their work split " +
                      "across the ranks)");
  record_command_line(argc, argv.data());
  CLI::App app;
  add_commands(app);
  try {
    app.parse(argc, argv.data());
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {  // --help, --version
      app.exit(e, report_out(), report_out());
      return;
    }
    throw usage_error(parse_error_message(app, e, argc, argv.data()));
  }
}

}  // namespace revmerge::cli
