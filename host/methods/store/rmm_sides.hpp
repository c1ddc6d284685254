#pragma once
// RMM with a basis size per side: for any p_A, p_B (0: the mean alone) every task's delta error
// in closed form from r × r Grams of the sides' differences D = X̂ − X, so the pairs cost one
// RMM run at the largest p. They are made on the backend where the run's results lie
// (rmm_candidates), and are both what the allocation weighs and what the manifest reports;
// side_differences measures the same in f64 on the host (the tests' reference).
#include <array>
#include <cstdint>
#include <vector>

#include "backend/backend.hpp"
#include "methods/adapter_set.hpp"
#include "methods/rmm_module.hpp"
#include "methods/store/module_grams.hpp"

namespace revmerge {

/// Per task, each side's positions X (m × r row-major, f64: A's columns or B's rows with the
/// scale folded in, zero-padded to r), their Gram XᵀX and its trace.
struct SideGrams {
  std::vector<std::vector<double>> x[2], xx[2];
  std::vector<double> x_sq[2];
};

SideGrams side_grams(const PlannedModule& pm, const std::vector<TaskFactors>& f, int threads);

/// The Grams and traces alone (x left empty), from the module's stacked Grams: each task's
/// diagonal blocks, B's times s², zero-padded to r.
SideGrams side_grams(const PlannedModule& pm, const std::vector<TaskFactors>& f, const ModuleGrams& g);

/// One side stored at basis size p (0: the mean alone): per task the Grams DᵀD and DᵀX of its
/// differences D = X̂ − X (m × r), and ‖D‖².
struct SideDifference {
  std::int64_t p = 0;
  std::vector<std::vector<double>> dd, dx;
  std::vector<double> d_sq;
};

/// Side `side` (0: A, 1: B) as `stored` holds it (an RMM result at basis size `stored_p`) at
/// each basis size of `ps` (ascending, each ≤ stored_p; only the first p directions are used, 0:
/// the mean alone), in one sweep over the directions, D and its Grams in f64 (what is
/// reported). Tasks on `threads` threads (0: all cores).
std::vector<SideDifference> side_differences(const PlannedModule& pm, const SideGrams& x, int side,
                                             const RmmSide& stored, std::int64_t stored_p,
                                             const std::vector<std::int64_t>& ps, int threads);

/// The tasks' factors as RMM reads them: A stacked n × r × in, B n × out × r with the scale
/// folded in (f32), rows and columns past a task's rank zero.
void rmm_stacks(const PlannedModule& pm, const std::vector<TaskFactors>& f, std::vector<float>& a,
                std::vector<float>& b);

/// The arguments of Backend::rmm_candidate_grams for side `side` of an RMM run queued into
/// `packed` (laid out as `layout`) with work `work`, at the basis sizes `ps`; grams left null.
kernels::RmmCandidateArgs rmm_candidate_args(const RmmShape& shape, int side, DType storage,
                                             const RmmPacked& layout, const void* packed,
                                             const RmmModuleWork& work, const std::vector<std::int64_t>& ps);

/// rmm_candidates in two halves: the constructor queues the work on the backend's default
/// stream and returns (on a GPU, before the work is done), so the host can measure the module's
/// other options meanwhile; take() waits and reads. Not taken, the destructor waits for the
/// queued work before its memory goes.
class RmmCandidateRun {
 public:
  RmmCandidateRun(Backend& be, const PlannedModule& pm, const std::vector<TaskFactors>& f,
                  const std::vector<std::int64_t>& ps, DType storage);
  ~RmmCandidateRun();
  RmmCandidateRun(const RmmCandidateRun&) = delete;
  RmmCandidateRun& operator=(const RmmCandidateRun&) = delete;
  std::array<std::vector<SideDifference>, 2> take();

 private:
  void queue_candidates(const RmmShape& shape, DType storage, const RmmPacked& layout);

  Backend& be_;
  Stream stream_{};
  std::vector<std::int64_t> ps_;
  std::int64_t n_, r_;
  bool queued_ = false;
  RmmInputs inputs_;
  DeviceBuffer packed_, grams_[2], results_;
  RmmModuleWork work_;
};

/// Both sides at every basis size of `ps` (ascending, 0: the mean alone; the last within RMM's
/// limits) from one RMM run on the backend at the largest: per task D_pᵀD_p, D_pᵀX and ‖D_p‖²,
/// made where the run's results lie (Backend::rmm_candidate_grams) — the estimates the
/// allocation weighs. Throws solver_error where an eigensolve did not converge.
std::array<std::vector<SideDifference>, 2> rmm_candidates(Backend& be, const PlannedModule& pm,
                                                          const std::vector<TaskFactors>& f,
                                                          const std::vector<std::int64_t>& ps,
                                                          DType storage);

/// Per task ‖B̂Â − BA‖_F² for the sides a and b:
/// ⟨BᵀB, D_AD_Aᵀ⟩ + ⟨D_BᵀD_B, AAᵀ⟩ + ⟨D_BᵀD_B, D_AD_Aᵀ⟩ + 2⟨BᵀD_B, D_AAᵀ⟩ + 2⟨BᵀD_B, D_AD_Aᵀ⟩
/// + 2⟨D_BᵀD_B, AD_Aᵀ⟩.
std::vector<double> delta_error_sq(const SideGrams& x, const SideDifference& a,
                                   const SideDifference& b, std::int64_t r);

/// Per task ‖BA‖_F² = ⟨BᵀB, AAᵀ⟩.
std::vector<double> delta_norm_sq(const SideGrams& x);

/// Numbers one side stores: m (p(r + n) + r).
double side_numbers(std::int64_t m, std::int64_t r, std::int64_t n, std::int64_t p);

}  // namespace revmerge
