// revmerge: reversible and classic merging of LoRA adapters and fine-tuned models.
#include <cstdio>
#include <exception>

#include "backend/blas_core.hpp"
#include "core/interrupt.hpp"
#include "revmerge/error.hpp"
#include "run.hpp"

int main(int argc, char** argv) {
  revmerge::restart_for_blas_kernels(argv);
  revmerge::install_interrupt_handlers();
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
