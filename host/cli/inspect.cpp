// `revmerge inspect`: storage, per-task and per-module errors, spectrum summary of a bundle.

#include "bundle_report.hpp"
#include "commands.hpp"
#include "revmerge/bundle.hpp"
#include "command_line.hpp"

namespace revmerge::cli {

void add_inspect_command(CLI::App& app) {
  struct Args {
    std::string bundle;
    bool json = false;
    std::size_t top = 10;
  };
  static Args args;
  args = {};  // each command line starts from the defaults (the Python package runs many)
  auto* cmd = app.add_subcommand("inspect", "Report a bundle's storage, errors and spectra");
  cmd->add_option("BUNDLE", args.bundle, "bundle folder")->required();
  cmd->add_flag("--json", args.json, "print JSON (summary and full manifest)");
  cmd->add_option("--top", args.top, "how many worst modules to list (default 10)");
  cmd->callback([] {
    const Bundle b(args.bundle);
    if (args.json)
      report_out() << bundle_report_json(b.manifest(), args.bundle).dump(1) << "\n";
    else
      print_bundle_report(b.manifest(), args.bundle, args.top);
  });
}

}  // namespace revmerge::cli
