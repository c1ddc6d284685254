#pragma once
// Each task's own delta ΔW = s·B·A (B out × r, A r × in) and its best rank-k truncation, through
// the two r × r Grams alone: AAᵀ = U Λ Uᵀ, then S = Λ^½ Uᵀ (s²BᵀB) U Λ^½ = W Σ² Wᵀ holds the
// squared singular values of ΔW, and B' = s B U Λ^½ W_k, A' = W_kᵀ Λ^-½ Uᵀ A are its top k
// directions (B' with orthogonal columns of norms σ, A' with orthonormal rows). Everything past
// the Grams is r × r work, so a module's truncations cost two rank-r updates per task.
#include <cstdint>
#include <vector>

#include "methods/adapter_set.hpp"
#include "revmerge/dtype.hpp"

namespace revmerge {

struct TaskTruncation {
  std::int64_t r = 0, in = 0, out = 0;
  std::vector<double> sigma_sq;   ///< the delta's squared singular values, descending (r)
  double norm_sq = 0;             ///< ‖ΔW‖_F² = ⟨s²BᵀB, AAᵀ⟩
  std::vector<double> left;       ///< r × r: B' = B · left[:, :k]
  std::vector<double> right;      ///< r × r: A' = right[:k, :] · A
  std::vector<double> aat, btb;   ///< AAᵀ and s²BᵀB (r × r)
};

/// A task's factors widened to f64 once, for the several products of its truncation (each of the
/// calls below that takes TaskFactors alone widens them again).
struct WideFactors {
  std::vector<double> a, b;  ///< A (r × in) and B (out × r), row-major, as TaskFactors holds them
};
WideFactors widen_factors(const TaskFactors& tf);

/// The Grams, their eigendecompositions and the transforms of task factors `tf` (rank r ≥ 0).
/// Directions of A whose energy is below 1e-14 of the largest count as empty.
TaskTruncation task_truncation(const TaskFactors& tf, std::int64_t out, std::int64_t in);
TaskTruncation task_truncation(const TaskFactors& tf, const WideFactors& wide, std::int64_t out, std::int64_t in);
/// The same from the task's Grams AAᵀ and s²BᵀB (r × r row-major, both triangles), made
/// elsewhere (module_grams.hpp: blocks of the module's stacked Grams).
TaskTruncation task_truncation(const TaskFactors& tf, std::int64_t out, std::int64_t in,
                               std::vector<double> aat, std::vector<double> btb);

/// The truncation to k ≤ r directions: B' (out × k) and A' (k × in), f32.
void truncated_factors(const TaskTruncation& t, const TaskFactors& tf, std::int64_t k,
                       std::vector<float>& b, std::vector<float>& a);
void truncated_factors(const TaskTruncation& t, const WideFactors& wide, std::int64_t k, std::vector<float>& b,
                       std::vector<float>& a);

/// Eigendecomposition of the symmetric r × r row-major `m`: eigenvalues ascending, returned;
/// eigenvectors left in m's columns. Throws solver_error naming dsyevd.
std::vector<double> symmetric_eigen(std::vector<double>& m, std::int64_t r);

/// The upper triangle a dsyrk wrote, mirrored into the lower one (r × r row-major).
void mirror_upper(std::vector<double>& m, std::int64_t r);

/// Rounds `values` to the stored dtype in place (widened back to f32): what the bundle holds.
void round_to_storage(std::vector<float>& values, DType storage);

/// ‖B'A' − s·B·A‖_F² for factors `b` (out × k) and `a` (k × in) as they will be stored, through
/// k × k and k × r Grams: ‖B'A'‖² − 2⟨s B'ᵀB, A'Aᵀ⟩ + ‖ΔW‖² (`norm_sq`, already known).
double truncation_error_sq(const TaskFactors& tf, std::int64_t out, std::int64_t in, double norm_sq,
                           const std::vector<float>& b, const std::vector<float>& a, std::int64_t k);
double truncation_error_sq(const TaskFactors& tf, const WideFactors& wide, std::int64_t out, std::int64_t in,
                           double norm_sq, const std::vector<float>& b, const std::vector<float>& a, std::int64_t k);

}  // namespace revmerge
