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

/// With --force, an output folder that is one of the command's inputs, or holds one, would be
/// replaced by the output the command makes from it: almost always a slip (`--out .`, a task's
/// folder), so it is refused by name. `option` names where the output was given.
void refuse_replacing_inputs(const std::filesystem::path& out, const std::vector<std::filesystem::path>& inputs,
                             const std::string& option);

}  // namespace revmerge::cli
