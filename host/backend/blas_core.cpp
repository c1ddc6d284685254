#include "backend/blas_core.hpp"

#include <cblas.h>
#include <strings.h>
#include <unistd.h>

#include <cstdlib>

namespace revmerge {

std::string blas_core_name() {
  const char* name = openblas_get_corename();
  return name ? name : "";
}

std::string blas_core_upgrade() {
#if defined(__x86_64__)
  const std::string core = blas_core_name();
  if (strcasecmp(core.c_str(), "Prescott") != 0) return {};
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return {};
}

void restart_for_blas_kernels(char** argv) {
  // Never against a choice the user made, and once only.
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("REVMERGE_BLAS_RESTARTED")) return;
  const std::string core = blas_core_upgrade();
  if (core.empty()) return;
  ::setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
  ::setenv("REVMERGE_BLAS_RESTARTED", "1", 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: then carry on as we are
  ::unsetenv("OPENBLAS_CORETYPE");
}

}  // namespace revmerge
