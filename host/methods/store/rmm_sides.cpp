#include "methods/store/rmm_sides.hpp"

#include <cblas.h>

#include <cstddef>

namespace revmerge {
namespace {

using i64 = std::int64_t;

i64 side_rows(const PlannedModule& pm, int side) { return side == 0 ? pm.in : pm.out; }

// Task t's positions of one side as an m × r row-major f64 matrix.
std::vector<double> positions(const PlannedModule& pm, const TaskFactors& tf, int side) {
  const i64 r = pm.rank, m = side_rows(pm, side);
  std::vector<double> x(static_cast<std::size_t>(m * r), 0.0);
  for (i64 j = 0; j < m; ++j)
    for (i64 k = 0; k < tf.rank; ++k)
      x[j * r + k] = side == 0 ? double(tf.a[k * pm.in + j]) : tf.scale * double(tf.b[j * tf.rank + k]);
  return x;
}

// uᵀv for m × r row-major u and v: an r × r matrix.
std::vector<double> gram(const std::vector<double>& u, const std::vector<double>& v, i64 m, i64 r) {
  std::vector<double> g(static_cast<std::size_t>(r * r));
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, r, m, 1.0, u.data(), r, v.data(), r, 0.0,
              g.data(), r);
  return g;
}

double trace(const std::vector<double>& g, i64 r) {
  double s = 0;
  for (i64 k = 0; k < r; ++k) s += g[k * r + k];
  return s;
}

// ⟨x, y⟩ and ⟨xᵀ, y⟩ of r × r matrices.
double dot(const std::vector<double>& x, const std::vector<double>& y) {
  double s = 0;
  for (std::size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
  return s;
}
double dot_transposed(const std::vector<double>& x, const std::vector<double>& y, i64 r) {
  double s = 0;
  for (i64 i = 0; i < r; ++i)
    for (i64 k = 0; k < r; ++k) s += x[k * r + i] * y[i * r + k];
  return s;
}

}  // namespace

double side_numbers(i64 m, i64 r, i64 n, i64 p) { return double(m) * double(p * (r + n) + r); }

SideGrams side_grams(const PlannedModule& pm, const std::vector<TaskFactors>& f) {
  SideGrams g;
  for (int side = 0; side < 2; ++side)
    for (const auto& tf : f) {
      const auto x = positions(pm, tf, side);
      g.xx[side].push_back(gram(x, x, side_rows(pm, side), pm.rank));
      g.x_sq[side].push_back(trace(g.xx[side].back(), pm.rank));
    }
  return g;
}

SideDifference side_difference(const PlannedModule& pm, const std::vector<TaskFactors>& f, int side,
                               const RmmSide& stored, i64 stored_p, i64 p) {
  const i64 r = pm.rank, m = side_rows(pm, side), n = static_cast<i64>(f.size());
  SideDifference out;
  out.p = p;
  for (i64 t = 0; t < n; ++t) {
    const auto x = positions(pm, f[t], side);
    std::vector<double> d(x.size());
    for (i64 j = 0; j < m; ++j)
      for (i64 k = 0; k < r; ++k) {
        double v = stored.mean[j * r + k];
        for (i64 q = 0; q < p; ++q)
          v += double(stored.basis[(j * r + k) * stored_p + q]) * double(stored.coef[(j * stored_p + q) * n + t]);
        d[j * r + k] = v - x[j * r + k];
      }
    out.dd.push_back(gram(d, d, m, r));
    out.dx.push_back(gram(d, x, m, r));
    out.d_sq.push_back(trace(out.dd.back(), r));
  }
  return out;
}

std::vector<double> delta_error_sq(const SideGrams& x, const SideDifference& a, const SideDifference& b, i64 r) {
  std::vector<double> out;
  for (std::size_t t = 0; t < a.dd.size(); ++t) {
    // With D_A = Â − A (r × in) and D_B = B̂ − B (out × r) as m × r position matrices:
    // D_AD_Aᵀ = a.dd, D_AAᵀ = a.dx, D_BᵀD_B = b.dd, BᵀD_B = b.dxᵀ, AAᵀ = xx[0], BᵀB = xx[1].
    const auto &dda = a.dd[t], &dxa = a.dx[t], &ddb = b.dd[t], &dxb = b.dx[t];
    const double e = dot(x.xx[1][t], dda) + dot(ddb, x.xx[0][t]) + dot(ddb, dda) +
                     2 * dot_transposed(dxb, dxa, r) + 2 * dot_transposed(dxb, dda, r) +
                     2 * dot_transposed(ddb, dxa, r);
    out.push_back(e > 0 ? e : 0.0);
  }
  return out;
}

std::vector<double> delta_norm_sq(const SideGrams& x) {
  std::vector<double> out;
  for (std::size_t t = 0; t < x.xx[0].size(); ++t) {
    const double v = dot(x.xx[1][t], x.xx[0][t]);
    out.push_back(v > 0 ? v : 0.0);
  }
  return out;
}

}  // namespace revmerge
