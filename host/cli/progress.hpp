#pragma once
// Progress of a streamed merge on stderr: a bar on a terminal (layers, GB/s, ETA), plain log
// lines otherwise (every tenth of the layers), nothing with --quiet.
#include "revmerge/rmm.hpp"

namespace revmerge::cli {

/// `what` starts each line ("merging"); an empty function when `quiet`.
PipelineProgressFn pipeline_progress(bool quiet, const char* what);

}  // namespace revmerge::cli
