#pragma once
// Progress of a streamed merge on stderr: a bar on a terminal (layers, GB/s, ETA), plain log
// lines otherwise (every tenth of the layers), nothing with --quiet.
#include "revmerge/rmm.hpp"

namespace revmerge::cli {

/// `what` starts each line ("merging"); an empty function when `quiet`.
PipelineProgressFn pipeline_progress(bool quiet, const char* what);

/// Module by module ("compressing 12/224 model.layers.1.mlp.up_proj"), one line rewritten on a
/// terminal's stderr and cleared at the end; an empty function when `quiet` or not a terminal.
ProgressFn module_progress(bool quiet, const char* what);

}  // namespace revmerge::cli
