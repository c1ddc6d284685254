#pragma once
// The shared row basis: one orthonormal basis V (in × K) for the row spaces of all tasks' deltas,
// and per task B̃_i = ΔW_i V (out × K), so ΔŴ_i = B̃_i Vᵀ. It pays where the tasks' A factors
// share one initialisation. V is the top K right singular vectors of the stacked deltas
// [ΔW_1; …; ΔW_n], found from R × R Grams (R = Σ r_i) of the stacked factors, never an in × in
// or out × in matrix; each K's errors follow in closed form. The R × R Grams (module_grams.hpp),
// the R × R products and the eigensolve run on the backend (a GPU's where the store has one);
// each task's r × r square root and the sums of the errors' terms stay on the host.
#include <cstdint>
#include <vector>

#include "backend/backend.hpp"
#include "methods/adapter_set.hpp"
#include "revmerge/dtype.hpp"

namespace revmerge {

struct SharedRows {
  std::int64_t in = 0, out = 0, total_rank = 0;  ///< R = Σ r_i
  /// Per task and K = 1 … R: ‖ΔW_i − ΔW_i V_K V_Kᵀ‖² (index K − 1).
  std::vector<std::vector<double>> error_sq;
  std::vector<double> norm_sq;       ///< per task ‖ΔW_i‖²
  std::vector<double> lambda;        ///< the stacked deltas' squared singular values, descending
  /// R × R: V = Aᵀ · to_basis, A the tasks' A_i stacked (R × in); column k gives direction k.
  std::vector<double> to_basis;
  std::vector<double> gram;          ///< R × R: A Aᵀ, the stacked A's Gram
};

/// The basis and every K's errors for tasks `f` (scale folded into B) from the stacked Grams
/// (module_grams.hpp): `gram` the R × R Gram of the side whose basis this is (A Aᵀ for the row
/// basis), `other` the other side's (BᵀB, no scale). The R × R products and eigensolve run on
/// `be`, queued on `stream` (waited for before returning). Without `errors` (a chosen basis stored: the
/// errors were measured already) error_sq stays zero, which saves an R × R × R product and the
/// per-task shares. Throws solver_error where the eigensolve fails.
SharedRows shared_rows(Backend& be, Stream stream, const std::vector<TaskFactors>& f,
                       const std::vector<double>& gram, const std::vector<double>& other, std::int64_t out,
                       std::int64_t in, bool errors = true);

/// The stored parts for K directions, rounded to `storage`: Vᵀ (K × in) and each task's
/// B̃_i = s_iB_i (A_i V) (out × K), formed with V as rounded (what the bundle holds); and each
/// task's ‖B̃_iVᵀ − ΔW_i‖² of the parts as rounded, through K × K and K × r_i Grams
/// (⟨B̃ᵀB̃, VᵀV⟩ − 2⟨B̃ᵀ s_iB_i, VᵀA_iᵀ⟩ + ‖ΔW_i‖²). The products run on `be`, queued on `stream`
/// and waited for.
struct SharedRowsParts {
  std::vector<float> basis_t;               ///< Vᵀ, K × in
  std::vector<std::vector<float>> task_b;   ///< per task B̃_i, out × K
  std::vector<double> error_sq;             ///< per task
};
SharedRowsParts shared_rows_parts(Backend& be, Stream stream, const SharedRows& s, const std::vector<TaskFactors>& f,
                                  std::int64_t k, DType storage);

}  // namespace revmerge
