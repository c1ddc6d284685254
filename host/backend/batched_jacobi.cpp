#include "backend/batched_jacobi.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace revmerge {
namespace {

using i64 = std::int64_t;
constexpr int L = 4;  // matrices per group: one AVX2 register of doubles

// One group of up to L matrices, element (i, j) of lane l at [(i * n + j) * L + l].
struct Group {
  double a[kJacobiMaxN * kJacobiMaxN * L];
  double v[kJacobiMaxN * kJacobiMaxN * L];
};

// The rotation J (J_pp = J_qq = c, J_pq = s, J_qp = −s) that zeroes a_pq in JᵀAJ (Golub & Van
// Loan's sym.schur2, the smaller angle); the identity where a_pq = 0 or the lane is done.
inline void rotation(double apq, double app, double aqq, bool active, double& c, double& s) {
  if (!active || apq == 0) {
    c = 1, s = 0;
    return;
  }
  const double tau = (aqq - app) / (2 * apq);
  const double t = (tau >= 0 ? 1.0 : -1.0) / (std::fabs(tau) + std::sqrt(1 + tau * tau));
  c = 1 / std::sqrt(1 + t * t);
  s = t * c;
}

// (x, y) ← (c·x − s·y, s·x + c·y) on every lane: one pair of entries of a rotated row or column.
[[gnu::always_inline]] inline void rotate(double* x, double* y, const double* c, const double* s) {
  for (int l = 0; l < L; ++l) {
    const double u = x[l], w = y[l];
    x[l] = c[l] * u - s[l] * w;
    y[l] = s[l] * u + c[l] * w;
  }
}

// Returns the lane that did not converge, or -1.
// AVX2 where the CPU has it (four lanes per instruction instead of two); no FMA, so the
// arithmetic, and the results, are the same either way.
[[gnu::target_clones("avx2", "default")]] int solve_group(Group& g, i64 n, int lanes) {
  double* a = g.a;
  double* v = g.v;
  double tol[L], off[L];
  bool active[L];
  for (int l = 0; l < L; ++l) {
    double fro = 0;
    for (i64 i = 0; i < n * n; ++i) fro += a[i * L + l] * a[i * L + l];
    // Done when the off-diagonal mass is at rounding level of the whole matrix: the backward
    // error LAPACK's solvers reach too.
    tol[l] = fro * 1e-32;
    active[l] = l < lanes && std::isfinite(fro);
    if (l < lanes && !std::isfinite(fro)) return l;
  }
  for (int sweep = 0; sweep < 60; ++sweep) {
    bool any = false;
    for (int l = 0; l < L; ++l) off[l] = 0;
    for (i64 p = 0; p < n; ++p)
      for (i64 q = p + 1; q < n; ++q)
        for (int l = 0; l < L; ++l) off[l] += a[(p * n + q) * L + l] * a[(p * n + q) * L + l];
    for (int l = 0; l < L; ++l) {
      active[l] = active[l] && off[l] > tol[l];
      any = any || active[l];
    }
    if (!any) return -1;
    for (i64 p = 0; p < n; ++p)
      for (i64 q = p + 1; q < n; ++q) {
        double c[L], s[L];
        for (int l = 0; l < L; ++l)
          rotation(a[(p * n + q) * L + l], a[(p * n + p) * L + l], a[(q * n + q) * L + l],
                   active[l], c[l], s[l]);
        // A ← JᵀAJ (columns, then rows p and q), V ← VJ.
        for (i64 k = 0; k < n; ++k) rotate(a + (k * n + p) * L, a + (k * n + q) * L, c, s);
        for (i64 k = 0; k < n; ++k) rotate(a + (p * n + k) * L, a + (q * n + k) * L, c, s);
        for (i64 k = 0; k < n; ++k) rotate(v + (k * n + p) * L, v + (k * n + q) * L, c, s);
      }
  }
  for (int l = 0; l < lanes; ++l)
    if (active[l]) return l;
  return -1;
}

}  // namespace

std::int64_t batched_jacobi_eigen(float* a, float* eigenvalues, std::int64_t n, std::int64_t first,
                                  std::int64_t last) {
  const i64 nn = n * n;
  Group g;
  for (i64 b0 = first; b0 < last; b0 += L) {
    const int lanes = static_cast<int>(std::min<i64>(L, last - b0));
    for (i64 i = 0; i < nn; ++i)
      for (int l = 0; l < L; ++l) {
        g.a[i * L + l] = l < lanes ? a[(b0 + l) * nn + i] : 0.0;
        g.v[i * L + l] = (i / n == i % n) ? 1.0 : 0.0;
      }
    if (const int bad = solve_group(g, n, lanes); bad >= 0) return b0 + bad;
    for (int l = 0; l < lanes; ++l) {
      i64 order[kJacobiMaxN] = {};
      std::iota(order, order + n, i64{0});
      std::stable_sort(order, order + n, [&](i64 x, i64 y) {
        return g.a[(x * n + x) * L + l] < g.a[(y * n + y) * L + l];
      });
      float* out = a + (b0 + l) * nn;
      for (i64 k = 0; k < n; ++k) {
        eigenvalues[(b0 + l) * n + k] = static_cast<float>(g.a[(order[k] * n + order[k]) * L + l]);
        for (i64 i = 0; i < n; ++i) out[k * n + i] = static_cast<float>(g.v[(i * n + order[k]) * L + l]);
      }
    }
  }
  return -1;
}

}  // namespace revmerge
