#pragma once
// The element-wise classic merges (task arithmetic, TIES, DARE, breadcrumbs, …) one piece of a
// tensor at a time, for the host and the device alike. A step is a loop over independent
// indices — elements, chunks of elements, or a statistics block's lanes — each index one call
// of the step's routine; a backend runs the indices in any order and on any number of threads.
// Every sum is taken in a fixed order inside one index (a lane of a block, in index order;
// a task loop, in task order), and everything shared between indices is an integer (counts,
// the smallest index), so the results are the same bits on every backend — and the bits of the
// CPU's own merge (methods/classic/sparsify.cpp, combine.cpp), which keeps its statistics per
// the same blocks and lanes.
//
// The step and its shared helpers: elementwise_step.hpp; the routines, one file per family;
// here, every step kind with its routine and the dispatch a backend runs.
#include <cstdint>

#include "kernels/elementwise_blends.hpp"
#include "kernels/elementwise_selective.hpp"
#include "kernels/elementwise_spherical.hpp"
#include "kernels/elementwise_step.hpp"
#include "kernels/elementwise_thinning.hpp"

namespace revmerge::kernels {

/// Every step kind with its routine, listed once: X(kind, routine).
#define REVMERGE_ELEMENTWISE_KINDS(X) \
  X(widen, widen_element) \
  X(lane_stats, lane_stats) \
  X(histogram, histogram_element) \
  X(tie_counts, tie_counts) \
  X(tie_scan, tie_scan) \
  X(trim, trim_chunk) \
  X(drop, drop_element) \
  X(della_keep, della_keep_element) \
  X(combine, combine_element) \
  X(dot_lanes, dot_lanes) \
  X(blend, blend_element) \
  X(nearswap, nearswap_element) \
  X(stock_lanes, stock_lane) \
  X(stock_rows, stock_row) \
  X(stock_blend, stock_blend) \
  X(scale, scale_element) \
  X(pair_lanes, pair_lane) \
  X(pair_rows, pair_row) \
  X(pair_columns, pair_column) \
  X(pair_blend, pair_blend) \
  X(gram_lanes, gram_lane) \
  X(gram_blend, gram_blend) \
  X(sce_lanes, sce_lane) \
  X(sce_ties, sce_ties) \
  X(sce_select, sce_select) \
  X(ram_counts, ram_counts) \
  X(ram_blend, ram_blend) \
  X(fusion_rows, fusion_row) \
  X(fusion_histogram, fusion_histogram) \
  X(fusion_blend, fusion_blend)

/// One index of a step of kind K.
template <ElementwiseKind K>
REVMERGE_HD_INLINE void elementwise_index_of(const ElementwiseStep& s, std::int64_t i) {
#define REVMERGE_ELEMENTWISE_IF(kind, routine) \
  if constexpr (K == ElementwiseKind::kind) routine(s, i);
  REVMERGE_ELEMENTWISE_KINDS(REVMERGE_ELEMENTWISE_IF)
#undef REVMERGE_ELEMENTWISE_IF
}

/// One index of any step (a backend's loop body).
REVMERGE_HD_INLINE void elementwise_index(const ElementwiseStep& s, std::int64_t i) {
  switch (s.kind) {
#define REVMERGE_ELEMENTWISE_CASE(kind, routine) \
  case ElementwiseKind::kind: routine(s, i); break;
    REVMERGE_ELEMENTWISE_KINDS(REVMERGE_ELEMENTWISE_CASE)
#undef REVMERGE_ELEMENTWISE_CASE
  }
}

/// The steps' loop body as a function object (Thrust's for_each on the device).
struct ElementwiseIndices {
  ElementwiseStep step;
  REVMERGE_HD void operator()(std::int64_t i) const { elementwise_index(step, i); }
};

/// The loop body of a step of kind K: the kind decided once per step, not per index, so that
/// the host's compiler inlines the routine into its loop.
template <ElementwiseKind K>
struct ElementwiseKindIndices {
  ElementwiseStep step;
  REVMERGE_HD void operator()(std::int64_t i) const { elementwise_index_of<K>(step, i); }
};

/// run(body) with the loop body of `step`'s kind (a host loop's dispatch).
template <class Run>
void with_elementwise_body(const ElementwiseStep& step, Run&& run) {
  switch (step.kind) {
#define REVMERGE_ELEMENTWISE_BODY(kind, routine) \
  case ElementwiseKind::kind: run(ElementwiseKindIndices<ElementwiseKind::kind>{step}); break;
    REVMERGE_ELEMENTWISE_KINDS(REVMERGE_ELEMENTWISE_BODY)
#undef REVMERGE_ELEMENTWISE_BODY
  }
}

}  // namespace revmerge::kernels
