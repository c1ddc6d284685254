#pragma once
// A plain double-precision RMM, written with loops and a cyclic Jacobi eigensolver; shares no
// code with revmerge's implementation. Tests compare revmerge against it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace revmerge::reference {

/// Eigenvalues (descending) and eigenvectors (column k of the row-major n × n `vectors`).
struct Eigen {
  std::vector<double> values, vectors;
};

inline Eigen jacobi_eigen(std::vector<double> a, int n) {
  std::vector<double> v(static_cast<std::size_t>(n * n), 0.0);
  for (int i = 0; i < n; ++i) v[i * n + i] = 1.0;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0, total = 0;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) (i == j ? total : off) += a[i * n + j] * a[i * n + j];
    if (off <= 1e-30 * (total + off) || off == 0) break;
    for (int p = 0; p < n; ++p)
      for (int q = p + 1; q < n; ++q) {
        const double apq = a[p * n + q];
        if (apq == 0) continue;
        const double theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int k = 0; k < n; ++k) {  // rotate columns p, q
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {  // rotate rows p, q
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (int k = 0; k < n; ++k) {
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int x, int y) { return a[x * n + x] > a[y * n + y]; });
  Eigen e;
  e.values.resize(n);
  e.vectors.resize(static_cast<std::size_t>(n * n));
  for (int k = 0; k < n; ++k) {
    e.values[k] = a[order[k] * n + order[k]];
    for (int i = 0; i < n; ++i) e.vectors[i * n + k] = v[i * n + order[k]];
  }
  return e;
}

/// The reference result for one position: x (r × n, row-major) → reconstruction with the top p
/// directions, and the eigenvalues of the centred Gram (descending).
struct Position {
  std::vector<double> recon;   // r × n
  std::vector<double> values;  // n
};

inline Position rmm_position(const std::vector<double>& x, int r, int n, int p) {
  std::vector<double> mu(r, 0.0), xc(x);
  for (int k = 0; k < r; ++k) {
    for (int i = 0; i < n; ++i) mu[k] += x[k * n + i];
    mu[k] /= n;
    for (int i = 0; i < n; ++i) xc[k * n + i] -= mu[k];
  }
  std::vector<double> g(static_cast<std::size_t>(n * n), 0.0);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      for (int k = 0; k < r; ++k) g[i * n + j] += xc[k * n + i] * xc[k * n + j];
  const auto e = jacobi_eigen(g, n);
  // x̂ = μ + X̃ W_p W_pᵀ: the projection onto the top-p eigenspace (unique when λ_p > λ_{p+1}).
  Position out{std::vector<double>(static_cast<std::size_t>(r * n)), e.values};
  for (int k = 0; k < r; ++k)
    for (int i = 0; i < n; ++i) {
      double s = 0;
      for (int q = 0; q < p; ++q) {
        double proj = 0;
        for (int j = 0; j < n; ++j) proj += xc[k * n + j] * e.vectors[j * n + q];
        s += proj * e.vectors[i * n + q];
      }
      out.recon[k * n + i] = mu[k] + s;
    }
  return out;
}

}  // namespace revmerge::reference
