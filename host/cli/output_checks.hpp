#pragma once
// Checks of a command's output folder before anything is read.
#include <filesystem>
#include <string>
#include <vector>

namespace revmerge::cli {

/// Temporary outputs an earlier run left beside an output (host/core/atomic_output.hpp's staged
/// names): a run killed outright — SIGKILL, the OOM killer, mpirun's kill after its grace —
/// cannot remove them, and a merge's can hold gigabytes under a hidden name.
/// Warns of each of core's temporaries_beside(out), with its size. Nothing is removed: a run
/// still writing `out` has the same names.
void warn_of_leftovers(const std::filesystem::path& out);

}  // namespace revmerge::cli
