#include "backend/blas_core.hpp"

#include <cblas.h>
#include <strings.h>

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

}  // namespace revmerge
