// revmerge: reversible and classic merging of LoRA adapters and fine-tuned models.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "backend/blas_core.hpp"
#include "command_line.hpp"
#include "commands.hpp"
#include "core/interrupt.hpp"
#include "revmerge/error.hpp"
#include "revmerge/version.hpp"

int main(int argc, char** argv) {
  revmerge::restart_for_blas_kernels(argv);
  revmerge::cli::record_command_line(argc, argv);
  CLI::App app{"revmerge " REVMERGE_VERSION_STRING
               ": reversible merging (RMM) and classic merging of LoRA adapters and fine-tuned "
               "models"};
  app.set_version_flag("--version", REVMERGE_VERSION_STRING);
  app.require_subcommand(1);
  revmerge::cli::add_info_command(app);
  revmerge::cli::add_merge_command(app);
  revmerge::cli::add_revert_command(app);
  revmerge::cli::add_add_command(app);
  revmerge::cli::add_inspect_command(app);
  revmerge::cli::add_compare_command(app);
  revmerge::cli::add_compress_command(app);
  revmerge::cli::add_bench_command(app);
  revmerge::cli::add_devices_command(app);
  revmerge::install_interrupt_handlers();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);  // --help
    std::fprintf(stderr, "revmerge: error: %s\n", revmerge::cli::parse_error_message(app, e, argc, argv).c_str());
    return 2;
  } catch (const revmerge::interrupted& e) {
    std::fprintf(stderr, "\nrevmerge: %s\n", e.what());
    return 130;
  } catch (const revmerge::usage_error& e) {
    std::fprintf(stderr, "revmerge: error: %s\n", e.what());
    return 2;
  } catch (const revmerge::error& e) {
    std::fprintf(stderr, "revmerge: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "revmerge: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
