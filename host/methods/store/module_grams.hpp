#pragma once
// A module's two stacked Grams, the arithmetic the budgeted store's measurements share. With
// R = Σ r_i and the tasks' factors stacked (the A_i's rows, the B_i's columns; no scale folded
// in), G_A = A Aᵀ and G_B = Bᵀ B are R × R, made in f64 on the backend (a GPU's where the store
// has one) from the f32 values. Task i's diagonal blocks are its own A_iA_iᵀ and B_iᵀB_i: its
// truncation's Grams (truncation.hpp) and RMM's side Grams (rmm_sides.hpp); the whole matrices
// are what the shared bases decompose (shared_rows.hpp).
#include <cstdint>
#include <vector>

#include "backend/backend.hpp"
#include "methods/adapter_set.hpp"

namespace revmerge {

struct ModuleGrams {
  std::int64_t total_rank = 0;      ///< R
  std::vector<std::int64_t> first;  ///< task i's rows and columns start at first[i]
  std::vector<double> a, b;         ///< G_A and G_B, R × R row-major

  /// Task t's diagonal block of `g` times `factor`, r_t × r_t, zero-padded to `pad` × `pad`
  /// (0: r_t).
  std::vector<double> block(const std::vector<double>& g, std::size_t t, std::int64_t rank, double factor = 1,
                            std::int64_t pad = 0) const;
};

/// Both Grams of tasks `f` (A_i r_i × in, B_i out × r_i), on `be`, queued on `stream` and waited
/// for.
ModuleGrams module_grams(Backend& be, Stream stream, const std::vector<TaskFactors>& f, std::int64_t out,
                         std::int64_t in);

}  // namespace revmerge
