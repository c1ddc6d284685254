#pragma once
// RMM for one module on a backend: one launch of the per-position routine for both sides
// (kernels/rmm_position.hpp), the error Grams as six GEMMs, one launch for the error terms, and
// the results in one packed buffer in the stored dtype — every step queued on one stream, no
// host wait inside the module (DESIGN.md §5).
#include <cstdint>
#include <span>
#include <vector>

#include "backend/backend.hpp"

namespace revmerge {

/// Sizes of one module's merge: n tasks of rank r (padded), an out × in weight, basis size p.
struct RmmShape {
  std::int64_t n = 0, r = 0, in = 0, out = 0, p = 0;
};

/// Throws usage_error unless 2 ≤ n ≤ 64, 1 ≤ p ≤ n − 1, 1 ≤ r ≤ 256 and in, out ≥ 1.
void check_rmm_shape(const RmmShape& shape);

/// Relative threshold below which a basis direction counts as empty: a direction whose energy
/// is within (n·ε_f32)² of the largest is rounding noise of f32 inputs.
float rmm_drop_tolerance(std::int64_t n);

/// Where one module's results lie in its packed buffer, in bytes from its start: side s's mean
/// (m × r), basis (m × r × p) and coefficients (m × p × n) in the stored dtype — the bundle's
/// tensors as written — then the error terms and spectrum (f64, kernels::RmmErrorArgs::out)
/// and the two status words (kernels::RmmModuleArgs::status).
struct RmmPacked {
  std::size_t mean[2] = {}, basis[2] = {}, coef[2] = {};
  std::size_t terms = 0, status = 0, bytes = 0;
  static RmmPacked layout(const RmmShape& shape, DType storage);
  /// Bytes of side s's tensor `part` (0 mean, 1 basis, 2 coef).
  std::size_t tensor_bytes(const RmmShape& shape, DType storage, int side, int part) const;
};

/// Backend memory one module's RMM holds while its work is queued (the error layout, the
/// eigenvalues, the Grams and their sums). Move-only; keep it until the stream has passed the
/// module (an event recorded after it has completed).
struct RmmModuleWork {
  std::vector<DeviceBuffer> buffers;
  /// Each side's x and D (kernels::RmmModuleArgs::ext), in `buffers`: what later work on the
  /// stream may read (the store's candidates read x there).
  float* ext[2] = {};
};

/// What a module's RMM measures besides its results: the error terms and the spectra (`all`),
/// the spectra alone (`spectrum`: the error Grams, a module's largest GEMMs, are left out and
/// the terms are zero), or nothing (`none`: the terms and spectra are zero) — for callers that
/// measure the results themselves.
enum class RmmTerms { none, spectrum, all };

/// Queues RMM of one module on `stream`. `tasks` says where each task's factors lie in backend
/// memory (any float dtype, B scaled by the task's scale, rows / columns past its rank zero);
/// the results go to `packed` (backend memory, RmmPacked::layout(...).bytes). `storage` is the
/// dtype the bundle stores: results are rounded to it before the errors are measured, so the
/// errors describe what is written. `terms` says what is measured. Returns the work memory to
/// keep until the stream is done.
RmmModuleWork rmm_module_enqueue(Backend& backend, const RmmShape& shape,
                                 const std::vector<kernels::RmmTaskFactors>& tasks,
                                 DType storage, void* packed, Stream stream, RmmTerms terms = RmmTerms::all);

/// Backend memory rmm_module_enqueue allocates for one module, in the pool's size classes
/// (inputs and the packed results excluded).
std::uint64_t rmm_module_work_bytes(const RmmShape& shape, const Backend& backend);

/// What a module's packed results say, read on the host.
struct RmmModuleReport {
  std::vector<double> delta_error;     ///< per task: ‖B̂Â − BA‖_F / ‖BA‖_F
  std::vector<double> delta_norm;      ///< per task: ‖BA‖_F
  std::vector<double> factor_error[2];     ///< per side and task: ‖X̂_i − X_i‖_F / ‖X_i‖_F
  std::vector<double> factor_sq_error[2];  ///< per side and task: ‖X̂_i − X_i‖_F² (absolute)
  std::vector<double> spectrum[2];     ///< Σ over positions of each eigenvalue, descending
  /// kernels::rmm_input_key of the first non-finite input, or kernels::kRmmNoKey.
  unsigned long long first_nonfinite = kernels::kRmmNoKey;
  /// Side << 48 | position of the first position whose eigensolver did not converge.
  unsigned long long first_unconverged = kernels::kRmmNoKey;
};

RmmModuleReport rmm_module_report(const RmmShape& shape, DType storage, const void* packed);

/// Throws solver_error naming the position where RmmModuleReport::first_unconverged says an
/// eigensolve did not converge.
void check_rmm_converged(unsigned long long first_unconverged);

/// The stored factors of one side, widened to f32 (tests and benches), and the side's errors.
struct RmmSide {
  std::vector<float> mean, basis, coef;  ///< m × r, m × r × p, m × p × n
  std::vector<double> spectrum, factor_error, factor_sq_error;
};

struct RmmModuleResult {
  RmmSide a, b;
  std::vector<double> delta_error, delta_norm;
};

/// A module's host stacks (rmm_module's layout) uploaded on `stream`, and where each task's
/// factors then lie.
struct RmmInputs {
  DeviceBuffer a, b;
  std::vector<kernels::RmmTaskFactors> tasks;
};
RmmInputs rmm_upload(Backend& backend, const RmmShape& shape, const float* host_a, const float* host_b,
                     Stream stream);

/// The kernels' name for a stored dtype (F32, F16 or BF16; others are refused).
kernels::ElemType rmm_storage_type(DType storage);

/// One module from host stacks to host results, waiting for them (tests, benches): `host_a` is
/// n × r × in (rows past a task's rank zero), `host_b` n × out × r with the scale folded in.
/// Throws solver_error if an eigensolve did not converge. Non-finite inputs give NaN results.
/// `terms` as rmm_module_enqueue's: what is not measured is zero.
RmmModuleResult rmm_module(Backend& backend, const RmmShape& shape, const float* host_a,
                           const float* host_b, DType storage, Stream stream, RmmTerms terms = RmmTerms::all);

}  // namespace revmerge
