#pragma once
// Temporary outputs an earlier run left beside an output (host/core/atomic_output.hpp's staged
// names): a run killed outright — SIGKILL, the OOM killer, mpirun's kill after its grace — cannot
// remove them, and a merge's can hold gigabytes under a hidden name.
#include <filesystem>

namespace revmerge::cli {

/// Warns of each `.NAME.…revmerge-tmp-*` / `.NAME.…revmerge-old-*` beside `out`, with its size.
/// Nothing is removed: a run still writing `out` has the same names.
void warn_of_leftovers(const std::filesystem::path& out);

}  // namespace revmerge::cli
