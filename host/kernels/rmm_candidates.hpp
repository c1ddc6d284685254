#pragma once
// RMM's candidates for the budgeted store (methods/store/rmm_sides.hpp), for the host and the
// device alike: one RMM run at the largest basis size P holds RMM at every smaller p too (its
// first p directions), and a side stored at p loses D_p = x̂_p − x at each position, x̂_p the
// mean plus the first p directions times their coefficients. The store weighs every p by the
// per-task r × 2r Grams D_pᵀ[D_p | X] summed over the positions (the delta error couples the
// sides through them). These routines make D_p's elements with RMM's own arithmetic — x̂ in f64
// from the stored values, each sum over the directions in order, then rounded to f32: what
// rmm_finish writes as D at p = P — and add the backends' Gram pieces in a fixed order.
#include <cstdint>

#include "kernels/float_bits.hpp"
#include "kernels/host_device.hpp"
#include "kernels/rmm_position.hpp"

namespace revmerge::kernels {

/// One side of one module's RMM run and the basis sizes to weigh.
struct RmmCandidateArgs {
  i64 n = 0, r = 0, m = 0;  ///< tasks, padded rank, positions of the side
  i64 stored_p = 0;         ///< P: the directions the run kept
  ElemType storage = ElemType::f32;
  const void* mean = nullptr;   ///< m × r, storage dtype
  const void* basis = nullptr;  ///< m × r × P
  const void* coef = nullptr;   ///< m × P × n
  /// The run's error layout (RmmModuleArgs::ext): n × m × 2r f32, each position's x in
  /// columns 0 … r − 1 (what RMM read, B scaled); the columns after are not read.
  const float* ext = nullptr;
  i64 count = 0;                  ///< candidates
  i64 ps[kRmmMaxTasks + 1] = {};  ///< ascending, each ≤ P (0: the mean alone)
  /// count × n × r × 2r, f64: per candidate and task, D_pᵀD_p (columns 0 … r − 1) beside D_pᵀX.
  double* grams = nullptr;
};

/// x̂ of task t at position j, row k, from `from` directions to `to` (x̂ already holds the mean
/// and the first `from`): RMM's step 7, one product and one sum per direction, in order.
REVMERGE_HD_INLINE double rmm_candidate_advance(const RmmCandidateArgs& a, i64 t, i64 j, i64 k,
                                                double xh, i64 from, i64 to) {
  const i64 P = a.stored_p;
  for (i64 q = from; q < to; ++q)
    xh += static_cast<double>(load_as_f32(a.basis, (j * a.r + k) * P + q, a.storage)) *
          static_cast<double>(load_as_f32(a.coef, (j * P + q) * a.n + t, a.storage));
  return xh;
}

/// The mean's element (j, k) as stored, widened: where x̂ starts.
REVMERGE_HD_INLINE double rmm_candidate_mean(const RmmCandidateArgs& a, i64 j, i64 k) {
  return static_cast<double>(load_as_f32(a.mean, j * a.r + k, a.storage));
}

/// x of task t at position j, row k, as RMM read it.
REVMERGE_HD_INLINE float rmm_candidate_x(const RmmCandidateArgs& a, i64 t, i64 j, i64 k) {
  return a.ext[(t * a.m + j) * 2 * a.r + k];
}

/// D_p's element from x̂_p and x.
REVMERGE_HD_INLINE float rmm_candidate_difference(double xh, float x) {
  return static_cast<float>(xh - static_cast<double>(x));
}

/// One call per element (t, j, k) of candidate `which`: row (t, j) of `rows` (n × m × 2r) gets
/// D_p in its first r columns and x in the next r, the layout one GEMM per task reads as
/// D_pᵀ[D_p | X].
struct RmmCandidateRows {
  RmmCandidateArgs a;
  i64 which;
  float* rows;
  REVMERGE_HD void operator()(i64 idx) const {
    const i64 r = a.r, k = idx % r, j = idx / r % a.m, t = idx / (r * a.m);
    const double xh =
        rmm_candidate_advance(a, t, j, k, rmm_candidate_mean(a, j, k), 0, a.ps[which]);
    const float x = rmm_candidate_x(a, t, j, k);
    float* row = rows + (t * a.m + j) * 2 * r;
    row[k] = rmm_candidate_difference(xh, x);
    row[r + k] = x;
  }
};

/// One call per element (t, e) of candidate `which`'s r × 2r Grams: the `chunks` f32 pieces
/// (n × chunks × r × 2r, the positions split into that many runs) added in order, in f64.
struct RmmCandidateChunkSums {
  RmmCandidateArgs a;
  i64 which, chunks;
  const float* pieces;
  REVMERGE_HD void operator()(i64 idx) const {
    const i64 per = 2 * a.r * a.r, t = idx / per, e = idx % per;
    double sum = 0;
    for (i64 c = 0; c < chunks; ++c) sum += pieces[(t * chunks + c) * per + e];
    a.grams[(which * a.n + t) * per + e] = sum;
  }
};

}  // namespace revmerge::kernels
