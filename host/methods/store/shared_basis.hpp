#pragma once
// A row basis V (in × Kv) and a column basis U (out × Ku) shared by a module's tasks, each task
// kept as its own factors in their coordinates: A_i V (r_i × Kv) and Uᵀ s_iB_i (Ku × r_i), so
// ΔŴ_i = U (Uᵀ s_iB_i)(A_i V) Vᵀ = U Uᵀ ΔW_i V Vᵀ at the task's own rank. It pays where the tasks'
// A's share an initialisation and their B's share columns: a task costs r_i (Kv + Ku) numbers
// instead of r_i (in + out). V and U are the top singular vectors of the stacked deltas on each
// side (shared_rows.hpp, on the ΔW_i and on the ΔW_iᵀ); every (Kv, Ku)'s errors then follow in
// closed form from the R × R matrices T_i = Uᵀ ΔW_i V (R = Σ r_i):
// ‖ΔW_i − ΔŴ_i‖² = ‖ΔW_i‖² − Σ_{j<Ku, l<Kv} T_i[j, l]².
#include <cstdint>
#include <vector>

#include "methods/adapter_set.hpp"
#include "methods/store/module_grams.hpp"
#include "methods/store/shared_rows.hpp"
#include "revmerge/dtype.hpp"

namespace revmerge {

struct SharedBasis {
  SharedRows rows;  ///< V = Aᵀ · rows.to_basis
  SharedRows cols;  ///< U = Bᵀ · cols.to_basis, B the tasks' B_iᵀ stacked (R × out)
};

/// Both bases of a module's tasks `f` (scale folded into B) from its stacked Grams `g`; `be`,
/// `stream` and `errors` as shared_rows's.
SharedBasis shared_basis(Backend& be, Stream stream, const std::vector<TaskFactors>& f, const ModuleGrams& g,
                         std::int64_t out, std::int64_t in, bool errors = true);

/// Per task, ‖ΔW_i − ΔŴ_i‖² at every (Kv, Ku) of `kv` × `ku` (each in 1 … R): entry
/// [x * ku.size() + y][i] for (kv[x], ku[y]). The T_i's products run on `be`, queued on `stream`
/// and waited for; the host sums their squares.
std::vector<std::vector<double>> shared_basis_errors(Backend& be, Stream stream, const SharedBasis& s,
                                                     const std::vector<TaskFactors>& f,
                                                     const std::vector<std::int64_t>& kv,
                                                     const std::vector<std::int64_t>& ku);

/// What the bundle stores for (kv, ku), rounded to `storage`: Vᵀ (kv × in), U (out × ku), the
/// A_i V stacked (R × kv) and the Uᵀ s_iB_i side by side (ku × R), each formed from the bases as
/// rounded; with the stored bases' Grams, which their errors need. The products (R × in and
/// R × out deep: the store's largest) run on `be`, queued on `stream` and waited for.
struct SharedBasisParts {
  std::int64_t kv = 0, ku = 0, total_rank = 0;
  std::vector<float> vt, u, core_a, core_b;
  std::vector<double> core_a64, core_b64;  ///< the cores in f64, before they were rounded
  std::vector<double> vv, uu;              ///< VᵀV (kv × kv) and UᵀU (ku × ku) of vt and u as stored
};
SharedBasisParts shared_basis_parts(Backend& be, Stream stream, const SharedBasis& s,
                                    const std::vector<TaskFactors>& f, std::int64_t kv, std::int64_t ku,
                                    DType storage);

/// Per task ‖ΔŴ_i − ΔW_i‖² of the stored parts `p` (the factors revert gives), given the tasks'
/// ‖ΔW_i‖² (`norm_sq`): ‖ΔŴ_i‖² − 2⟨ΔŴ_i, ΔW_i⟩ + ‖ΔW_i‖² through UᵀU (Ku × Ku), VᵀV (Kv × Kv)
/// and r_i × r_i products, never a task's out × r or r × in factors:
/// ‖ΔŴ_i‖² = ⟨C_bᵀ(UᵀU)C_b, C_a(VᵀV)C_aᵀ⟩ and ⟨ΔŴ_i, ΔW_i⟩ = ⟨C_bᵀ(Uᵀs_iB_i), C_a(A_iV)ᵀ⟩, with
/// C_a, C_b the task's stored cores and Uᵀs_iB_i, A_iV the cores before rounding. The products
/// run on `be`, queued on `stream` and waited for.
std::vector<double> shared_basis_stored_errors(Backend& be, Stream stream, const SharedBasisParts& p,
                                               const std::vector<TaskFactors>& f, const std::vector<double>& norm_sq);

/// Task factors from stored parts (what `revert` gives): A' = core_a[first:first+r] · Vᵀ
/// (r × in) and B' = U · core_b[:, first:first+r] (out × r), formed in f64, returned in f32.
/// `vt` is kv × in, `u` out × ku, `core_a` R × kv, `core_b` ku × R.
void shared_basis_task(const float* vt, const float* u, const float* core_a, const float* core_b,
                       std::int64_t in, std::int64_t out, std::int64_t kv, std::int64_t ku,
                       std::int64_t total_rank, std::int64_t first, std::int64_t r, std::vector<float>& a,
                       std::vector<float>& b);

}  // namespace revmerge
