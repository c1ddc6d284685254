#pragma once
// Which OpenBLAS kernels this process runs, and a better choice where OpenBLAS picked badly.
//
// OpenBLAS chooses its kernels for the CPU when the library loads. Debian 12's OpenBLAS 0.3.21
// does not know Cooper Lake, Sapphire Rapids and later x86 CPUs and falls back to its SSE3
// "Prescott" kernels there (OpenBLAS issues #3453, #4267, fixed in later releases): single-
// precision GEMM runs ~1.7× slower, which costs the RMM merge of a 7B set ~40 % of its time.
// The only lever is the OPENBLAS_CORETYPE environment variable, read at load time, so the
// revmerge program sets it and starts itself again (host/cli/main.cpp).
#include <string>

namespace revmerge {

/// The kernel set OpenBLAS runs in this process ("SkylakeX", "Haswell", "Prescott", …).
std::string blas_core_name();

/// The OPENBLAS_CORETYPE to ask for instead — "SkylakeX" on a CPU with AVX-512, "Haswell" on
/// one with AVX2 and FMA — when OpenBLAS fell back to its generic kernels on such a CPU;
/// empty otherwise.
std::string blas_core_upgrade();

/// Where blas_core_upgrade() names better kernels and OPENBLAS_CORETYPE is not set, sets it and
/// starts the program again (execv of /proc/self/exe with `argv`), once; returns otherwise (and
/// if the restart fails). For a program's main, before anything else has run.
void restart_for_blas_kernels(char** argv);

}  // namespace revmerge
