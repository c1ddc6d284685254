// revmerge: reversible and classic merging of LoRA adapters and fine-tuned models.
#include <cstdio>
#include <exception>
#include <memory>

#include "backend/blas_core.hpp"
#include "core/interrupt.hpp"
#include "mpi_world.hpp"
#include "revmerge/error.hpp"
#include "run.hpp"

namespace {

// Runs one command line; the exit status, the error printed.
int run_printing_errors(int argc, char** argv) {
  try {
    revmerge::cli::run_command_line({argv + 1, argv + argc});
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

}  // namespace

int main(int argc, char** argv) {
  revmerge::restart_for_blas_kernels(argv);
  revmerge::install_interrupt_handlers();
  std::unique_ptr<revmerge::Peers> world;
  try {
    world = revmerge::cli::join_mpi_world(&argc, &argv);
  } catch (const revmerge::error& e) {
    std::fprintf(stderr, "revmerge: error: %s\n", e.what());
    return 2;
  }
  // Under mpirun rank 0 speaks for all: the ranks agree on every failure, so its report and
  // its error are the run's.
  if (world && world->rank() > 0) {
    if (!std::freopen("/dev/null", "w", stdout) || !std::freopen("/dev/null", "w", stderr)) return 1;
  }
  revmerge::cli::set_command_peers(world.get());
  const int rc = run_printing_errors(argc, argv);
  revmerge::cli::set_command_peers(nullptr);
  if (world) {
    // No rank leaves before all have cleaned up: a launcher stops the whole job when one rank
    // exits with an error, and rank 0 may still be removing its temporary output.
    try {
      world->all_gather({});
    } catch (const std::exception&) {
    }
  }
  world.reset();  // MPI_Finalize: every rank gets here, the agreement saw to it
  return rc;
}
