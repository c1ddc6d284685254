#pragma once
// kernels::rmm_jacobi on eight matrices at once, one per vector lane (the CPU's form of the
// routine's eigensolver; ~8× fewer instructions than one matrix at a time). Every operation is
// rmm_jacobi's, applied lane by lane in the same order — a matrix that has converged is left
// as it is while the others go on — so each matrix gets rmm_jacobi's bits. Host only: GCC
// vector extensions, lowered to SSE2, AVX2 or AVX-512 by whichever target clone includes it.
#include <cmath>
#include <cstdint>

#include "kernels/rmm_jacobi.hpp"

namespace revmerge::cpu {

using i64 = std::int64_t;

inline constexpr int kJacobiLanes = 8;
typedef double Lanes __attribute__((vector_size(8 * kJacobiLanes)));
typedef long long LaneMask __attribute__((vector_size(8 * kJacobiLanes)));

// √x on every lane, into `out` (by reference: a vector this wide is passed differently by
// different targets' ABIs, which GCC warns about for a value).
[[gnu::always_inline]] inline void lane_sqrt(const Lanes& x, Lanes& out) {
  for (int l = 0; l < kJacobiLanes; ++l) out[l] = std::sqrt(x[l]);  // vsqrtpd with -fno-math-errno
}

[[gnu::always_inline]] inline Lanes& at(double* a, i64 i) {
  return *reinterpret_cast<Lanes*>(a + i * kJacobiLanes);
}

/// Matrix l's element i (row-major N × N) at a[i · 8 + l], vt likewise (the identity on entry),
/// 64-byte aligned. Matrix l takes part when active[l]; converged[l] is rmm_jacobi's result for
/// it (false for one not taking part).
[[gnu::always_inline]] inline void jacobi_lanes(double* a, double* vt, i64 N, const bool* active,
                                               bool* converged) {
  constexpr int L = kJacobiLanes;
  constexpr i64 kMaxHalf = 32;  // N ≤ 64
  const Lanes zero = {}, one = zero + 1.0, two = zero + 2.0, four = zero + 4.0;
  Lanes tol = zero;
  LaneMask on;
  {
    Lanes fro = zero;
    for (i64 i = 0; i < N * N; ++i) fro += at(a, i) * at(a, i);
    for (int l = 0; l < L; ++l) {
      tol[l] = kernels::rmm_jacobi_tolerance(fro[l]);
      on[l] = active[l] ? -1 : 0;
      converged[l] = false;
    }
  }
  const i64 half = N / 2;
  Lanes c[kMaxHalf], s[kMaxHalf], t[kMaxHalf];
  for (int sweep = 0; sweep <= kernels::kJacobiMaxSweeps; ++sweep) {
    Lanes off = zero;
    for (i64 p = 0; p < N; ++p)
      for (i64 q = p + 1; q < N; ++q) off += at(a, p * N + q) * at(a, p * N + q);
    bool any = false;
    for (int l = 0; l < L; ++l) {
      if (on[l] && !(off[l] > tol[l])) converged[l] = true, on[l] = 0;
      any = any || on[l];
    }
    if (!any || sweep == kernels::kJacobiMaxSweeps) return;
    for (i64 step = 0; step < N - 1; ++step) {
      i64 P[kMaxHalf], Q[kMaxHalf];
      for (i64 k = 0; k < half; ++k) {  // kernels::rmm_rotation, lane by lane
        kernels::rmm_round_robin(N, step, k, P[k], Q[k]);
        const Lanes apq = at(a, P[k] * N + Q[k]), app = at(a, P[k] * N + P[k]),
                    aqq = at(a, Q[k] * N + Q[k]);
        const Lanes d = aqq - app, ad = d >= 0 ? d : -d;
        const Lanes num = d >= 0 ? two * apq : -two * apq;
        Lanes root, croot;
        lane_sqrt(d * d + four * (apq * apq), root);
        const Lanes tt = num / (ad + root);
        t[k] = apq == 0 ? zero : tt;
        lane_sqrt(one + t[k] * t[k], croot);
        c[k] = one / croot;
        s[k] = t[k] * c[k];
      }
      for (i64 u = 0; u < half; ++u) {
        const i64 p1 = P[u], q1 = Q[u];
        {  // the rotated pair itself: diagonal in closed form, off-diagonal zero
          Lanes& pp = at(a, p1 * N + p1);
          Lanes& qq = at(a, q1 * N + q1);
          Lanes& pq = at(a, p1 * N + q1);
          Lanes& qp = at(a, q1 * N + p1);
          const Lanes apq = pq;
          const Lanes npp = pp - t[u] * apq, nqq = qq + t[u] * apq;
          pp = on ? npp : pp;
          qq = on ? nqq : qq;
          pq = on ? zero : pq;
          qp = on ? zero : qp;
        }
        for (i64 w = u + 1; w < half; ++w) {  // block rows (p1, q1) × columns (p2, q2)
          const i64 p2 = P[w], q2 = Q[w];
          const Lanes c1 = c[u], s1 = s[u], c2 = c[w], s2 = s[w];
          const Lanes b00 = at(a, p1 * N + p2), b01 = at(a, p1 * N + q2);
          const Lanes b10 = at(a, q1 * N + p2), b11 = at(a, q1 * N + q2);
          const Lanes e00 = c2 * b00 - s2 * b01, e01 = s2 * b00 + c2 * b01;
          const Lanes e10 = c2 * b10 - s2 * b11, e11 = s2 * b10 + c2 * b11;
          const Lanes f00 = c1 * e00 - s1 * e10, f10 = s1 * e00 + c1 * e10;
          const Lanes f01 = c1 * e01 - s1 * e11, f11 = s1 * e01 + c1 * e11;
          at(a, p1 * N + p2) = at(a, p2 * N + p1) = on ? f00 : b00;
          at(a, p1 * N + q2) = at(a, q2 * N + p1) = on ? f01 : b01;
          at(a, q1 * N + p2) = at(a, p2 * N + q1) = on ? f10 : b10;
          at(a, q1 * N + q2) = at(a, q2 * N + q1) = on ? f11 : b11;
        }
      }
      for (i64 k = 0; k < half; ++k)
        for (i64 col = 0; col < N; ++col) {
          Lanes& vp = at(vt, P[k] * N + col);
          Lanes& vq = at(vt, Q[k] * N + col);
          const Lanes x = vp, y = vq;
          const Lanes nx = c[k] * x - s[k] * y, ny = s[k] * x + c[k] * y;
          vp = on ? nx : x;
          vq = on ? ny : y;
        }
    }
  }
}

}  // namespace revmerge::cpu
