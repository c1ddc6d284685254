// revmerge: reversible and classic merging of LoRA adapters and fine-tuned models.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "backend/blas_core.hpp"
#include "commands.hpp"
#include "core/interrupt.hpp"
#include "revmerge/error.hpp"
#include "revmerge/version.hpp"

namespace {

// OpenBLAS picked its kernels when it loaded; where it fell back to generic ones on a CPU with
// AVX2 or AVX-512 (backend/blas_core.hpp), start again with the right ones. Once only, and
// never against a choice the user made.
void restart_for_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("REVMERGE_BLAS_RESTARTED")) return;
  const std::string core = revmerge::blas_core_upgrade();
  if (core.empty()) return;
  ::setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
  ::setenv("REVMERGE_BLAS_RESTARTED", "1", 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: then carry on as we are
  ::unsetenv("OPENBLAS_CORETYPE");
}

}  // namespace

int main(int argc, char** argv) {
  restart_for_blas_kernels(argv);
  CLI::App app{"revmerge " REVMERGE_VERSION_STRING
               ": reversible merging (RMM) and classic merging of LoRA adapters and fine-tuned "
               "models"};
  app.set_version_flag("--version", REVMERGE_VERSION_STRING);
  app.require_subcommand(1);
  revmerge::cli::add_info_command(app);
  revmerge::cli::add_merge_command(app);
  revmerge::cli::add_revert_command(app);
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
