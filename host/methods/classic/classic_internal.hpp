#pragma once
// Shared pieces of the classic-method drivers (adapters and checkpoints).
#include <cstdint>
#include <vector>

#include "revmerge/classic.hpp"

namespace revmerge {

/// The per-task weights (default 1) and densities (default 1; one value for all) of a merge of
/// n tasks, checked: counts, finiteness, densities in [0, 1].
struct TaskParameters {
  std::vector<double> weights, densities;
};
TaskParameters task_parameters(const ClassicMergeOptions& options, std::size_t n);

/// Whether the method works element by element (everything but cat and svd).
bool is_elementwise(ClassicMethod method);

ClassicMergeReport merge_classic_adapters(const ClassicMergeOptions& options);
ClassicMergeReport merge_classic_checkpoints(const ClassicMergeOptions& options);

}  // namespace revmerge
