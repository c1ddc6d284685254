#pragma once
// RMM for one module on a backend: all positions of A and of B in one batch each, every step on
// the backend (no host round trip between steps), results downloaded at the end.
#include <cstdint>
#include <vector>

#include "backend/backend.hpp"

namespace revmerge {

/// Sizes of one module's merge: n tasks of rank r (padded), an out × in weight, basis size p.
struct RmmShape {
  std::int64_t n = 0, r = 0, in = 0, out = 0, p = 0;
};

/// The stored factors of one side (A or B) of a module, position-major:
/// mean (m × r), basis (m × r × p), coef (m × p × n); m = in for A, out for B.
struct RmmSide {
  std::vector<float> mean, basis, coef;
  std::vector<double> spectrum;      ///< Σ over positions of each eigenvalue, descending (n)
  std::vector<double> factor_error;  ///< per task: ‖X̂_i − X_i‖_F / ‖X_i‖_F
  std::vector<double> factor_sq_error;  ///< per task: ‖X̂_i − X_i‖_F² (absolute)
};

struct RmmModuleResult {
  RmmSide a, b;
  std::vector<double> delta_error;  ///< per task: ‖B̂Â − BA‖_F / ‖BA‖_F
  std::vector<double> delta_norm;   ///< per task: ‖BA‖_F
};

/// How the per-position steps of a side are run. whole_batch: each step over all positions at
/// once (one launch per step: the GPU's way). position_blocks: blocks of positions, one thread
/// each, every step of a block while it sits in that core's cache (the CPU's way; CPU backend
/// only). Both give the same bits; automatic picks by the backend.
enum class RmmSchedule { automatic, whole_batch, position_blocks };

/// Relative threshold below which a basis direction counts as empty (see normalize_basis).
float rmm_drop_tolerance(std::int64_t n);

/// Runs RMM on one module. `host_a` holds the n tasks' A factors (n × r × in, zero-padded
/// rows past a task's rank), `host_b` their B factors with the scale folded in (n × out × r,
/// zero-padded columns). `storage` is the dtype the bundle will store: the factors are rounded
/// to it before the errors are measured, so the errors describe what is written.
/// The same with the stacks already in backend memory (the pipeline uploads them beforehand,
/// or on the CPU hands over its staging buffers); they are only read.
RmmModuleResult rmm_module_device(Backend& backend, const RmmShape& shape, const float* a,
                                  const float* b, DType storage, Stream stream,
                                  RmmSchedule schedule = RmmSchedule::automatic);

/// Backend memory rmm_module_device allocates for one module, inputs excluded (in the pool's
/// size classes, so it bounds what the pool holds for the module).
std::uint64_t rmm_module_work_bytes(const RmmShape& shape, Backend& backend);

RmmModuleResult rmm_module(Backend& backend, const RmmShape& shape, const float* host_a,
                           const float* host_b, DType storage, Stream stream,
                           RmmSchedule schedule = RmmSchedule::automatic);

}  // namespace revmerge
