#pragma once
// The symmetric eigensolver of the per-position routine: cyclic Jacobi in f64, in the parallel
// (round-robin) order, by a team (one matrix, its work split over the team's lanes). The CPU
// runs the same operations on eight matrices in lockstep (backend/cpu_jacobi_lanes.hpp): the
// same bits (tests/kernels/rmm_jacobi_test.cpp checks it).
//
// Why Jacobi: one n × n Gram per weight position (n = tasks, ~80 000 per llama-7b layer), each
// small enough to live in registers or shared memory; Jacobi is exact to rounding for small
// eigenvalues too, branch-free enough for lockstep lanes, and what cuSOLVER's syevjBatched runs.
#include <cmath>
#include <cstdint>

#include "kernels/host_device.hpp"
#include "kernels/team.hpp"

namespace revmerge::kernels {

inline constexpr int kJacobiMaxSweeps = 60;

/// The Jacobi order: n rounded up to even (an odd n gets a zero row and column that no
/// rotation touches).
REVMERGE_HD inline i64 rmm_jacobi_order(i64 n) { return n + (n & 1); }

/// The pair of step `step`'s rotation `pair` in a round-robin ("circle") order over N indices:
/// every pair exactly once in N − 1 steps, the N/2 pairs of a step disjoint. (Conditional
/// subtractions stand for the modulo: step < N − 1 and pair < N/2.)
REVMERGE_HD inline void rmm_round_robin(i64 N, i64 step, i64 pair, i64& p, i64& q) {
  i64 i, j;
  if (pair == 0) {
    i = step, j = N - 1;
  } else {
    i = step + pair;
    if (i >= N - 1) i -= N - 1;
    j = step - pair + N - 1;
    if (j >= N - 1) j -= N - 1;
  }
  p = i < j ? i : j;
  q = i < j ? j : i;
}

/// The rotation that zeroes a_pq of a symmetric matrix (Golub & Van Loan's sym.schur2, the
/// smaller angle, written with one division and one root for t): J with J_pp = J_qq = c,
/// J_pq = s, J_qp = −s, and t = s / c; the identity where a_pq = 0. No branch, so lanes in
/// lockstep can run it on vectors.
REVMERGE_HD_INLINE void rmm_rotation(double apq, double app, double aqq, double& c, double& s,
                                     double& t) {
  const double d = aqq - app, ad = d >= 0 ? d : -d;
  const double num = d >= 0 ? 2 * apq : -2 * apq;
  const double tt = num / (ad + sqrt(d * d + 4 * (apq * apq)));
  t = apq == 0 ? 0.0 : tt;
  c = 1 / sqrt(1 + t * t);
  s = t * c;
}

/// The tolerance of the stopping test: the off-diagonal mass at rounding level of the whole
/// matrix (the backward error LAPACK's solvers reach too).
REVMERGE_HD_INLINE double rmm_jacobi_tolerance(double frobenius_sq) { return frobenius_sq * 1e-32; }

/// Eigendecomposition of the symmetric N × N matrix `a` (N even) by `team`: each step applies
/// N/2 disjoint rotations (their angles from the same matrix), a sweep is N − 1 steps, and the
/// sweeps stop when the off-diagonal mass Σ_{p<q} a_pq² is at most the tolerance. On return
/// a's diagonal holds the eigenvalues and row e of `vt` eigenvector e (vt must hold the
/// identity on entry). Returns false when 60 sweeps did not converge. Scratch: `rot` 3 · N/2
/// doubles, `pairs` N ints, `scal` 2 doubles. The matrix stays exactly symmetric: each
/// off-diagonal 2 × 2 block is computed once and mirrored.
template <class Team>
REVMERGE_HD_INLINE bool rmm_jacobi(const Team& team, double* a, double* vt, i64 N, double* rot,
                                   int* pairs, double* scal) {
  if (team.lane() == 0) {
    double fro = 0;
    for (i64 i = 0; i < N * N; ++i) fro += a[i] * a[i];
    scal[0] = rmm_jacobi_tolerance(fro);
  }
  const i64 half = N / 2;
  for (int sweep = 0; sweep <= kJacobiMaxSweeps; ++sweep) {
    team.sync();
    if (team.lane() == 0) {
      double off = 0;
      for (i64 p = 0; p < N; ++p)
        for (i64 q = p + 1; q < N; ++q) off += a[p * N + q] * a[p * N + q];
      scal[1] = off > scal[0] ? 1.0 : 0.0;
    }
    team.sync();
    if (scal[1] == 0.0) return true;
    if (sweep == kJacobiMaxSweeps) return false;
    for (i64 step = 0; step < N - 1; ++step) {
      team_for(team, half, [&](i64 k) {
        i64 p, q;
        rmm_round_robin(N, step, k, p, q);
        pairs[2 * k] = static_cast<int>(p);
        pairs[2 * k + 1] = static_cast<int>(q);
        rmm_rotation(a[p * N + q], a[p * N + p], a[q * N + q], rot[k], rot[half + k],
                     rot[2 * half + k]);
      });
      team.sync();
      // A ← JᵀAJ block by block (blocks of pairs u ≤ w), and V ← VJ (rows of vt): the two
      // touch different memory and read only what this step's rotations left alone.
      auto block = [&](i64 u, i64 w) {
        const i64 p1 = pairs[2 * u], q1 = pairs[2 * u + 1];
        const double c1 = rot[u], s1 = rot[half + u], t1 = rot[2 * half + u];
        if (u == w) {  // the rotated pair itself: diagonal in closed form, off-diagonal zero
          const double apq = a[p1 * N + q1];
          a[p1 * N + p1] -= t1 * apq;
          a[q1 * N + q1] += t1 * apq;
          a[p1 * N + q1] = a[q1 * N + p1] = 0;
          return;
        }
        const i64 p2 = pairs[2 * w], q2 = pairs[2 * w + 1];
        const double c2 = rot[w], s2 = rot[half + w];
        // Block rows (p1, q1) × columns (p2, q2): columns rotated by J_w, then rows by J_u.
        const double b00 = a[p1 * N + p2], b01 = a[p1 * N + q2];
        const double b10 = a[q1 * N + p2], b11 = a[q1 * N + q2];
        const double e00 = c2 * b00 - s2 * b01, e01 = s2 * b00 + c2 * b01;
        const double e10 = c2 * b10 - s2 * b11, e11 = s2 * b10 + c2 * b11;
        const double f00 = c1 * e00 - s1 * e10, f10 = s1 * e00 + c1 * e10;
        const double f01 = c1 * e01 - s1 * e11, f11 = s1 * e01 + c1 * e11;
        a[p1 * N + p2] = a[p2 * N + p1] = f00;
        a[p1 * N + q2] = a[q2 * N + p1] = f01;
        a[q1 * N + p2] = a[p2 * N + q1] = f10;
        a[q1 * N + q2] = a[q2 * N + q1] = f11;
      };
      if constexpr (Team::serial) {
        for (i64 u = 0; u < half; ++u)
          for (i64 w = u; w < half; ++w) block(u, w);
      } else {
        team_for2(team, half, half, [&](i64 u, i64 w) {
          if (w >= u) block(u, w);
        });
      }
      team_for2(team, half, N, [&](i64 k, i64 col) {
        const i64 p = pairs[2 * k], q = pairs[2 * k + 1];
        const double c = rot[k], sn = rot[half + k];
        const double vp = vt[p * N + col], vq = vt[q * N + col];
        vt[p * N + col] = c * vp - sn * vq;
        vt[q * N + col] = sn * vp + c * vq;
      });
      team.sync();
    }
  }
  return false;
}

}  // namespace revmerge::kernels
