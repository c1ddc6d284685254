#pragma once
// Low-rank re-factorisation for the LoRA methods: Σ cᵢ BᵢAᵢ (never formed as an out × in
// matrix) or a dense merged delta, written back as B' A' of a chosen rank by a truncated SVD.
// B' = U_R Σ_R and A' = V_Rᵀ, the split PEFT's svd combination writes. Double precision
// inside (LAPACK), f32 in and out.
#include <cstdint>
#include <span>
#include <vector>

namespace revmerge {

/// One term cᵢ BᵢAᵢ: B out × r and A r × in, row-major.
struct LowRankTerm {
  std::span<const float> b, a;
  std::int64_t rank = 0;
  double coefficient = 1.0;
};

struct LowRankFactors {
  std::vector<float> b;  ///< out × rank
  std::vector<float> a;  ///< rank × in
  std::int64_t rank = 0;
  std::vector<double> singular_values;  ///< all of them, descending (the dropped ones too)
};

/// ‖Σ cᵢ BᵢAᵢ‖_F² through the two K × K Grams of the stacked factors (K = Σ rankᵢ), never an
/// out × in matrix; in double precision.
double lowrank_norm_sq(const std::vector<LowRankTerm>& terms, std::int64_t out, std::int64_t in);

/// The best rank-`rank` approximation of Σ cᵢ BᵢAᵢ, through QR of the stacked B's and of the
/// stacked Aᵀ's and an SVD of the small core R_B R_Aᵀ. Directions past the sum's own rank
/// come out as zeros. Throws solver_error when LAPACK fails.
LowRankFactors refactor_sum(const std::vector<LowRankTerm>& terms, std::int64_t out,
                            std::int64_t in, std::int64_t rank);

/// The best rank-`rank` approximation of a dense out × in matrix (LAPACK dgesdd).
LowRankFactors refactor_dense(std::span<const float> dense, std::int64_t out, std::int64_t in,
                              std::int64_t rank);

}  // namespace revmerge
