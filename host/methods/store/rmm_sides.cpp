#include "methods/store/rmm_sides.hpp"

#include <cblas.h>

#include <cstddef>

#include "methods/store/parallel_tasks.hpp"

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

// uᵀu for an m × r row-major u (half the work of gram(u, u)).
std::vector<double> self_gram(const std::vector<double>& u, i64 m, i64 r) {
  std::vector<double> g(static_cast<std::size_t>(r * r));
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, r, m, 1.0, u.data(), r, 0.0, g.data(), r);
  for (i64 i = 0; i < r; ++i)
    for (i64 j = 0; j < i; ++j) g[i * r + j] = g[j * r + i];
  return g;
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

SideGrams side_grams(const PlannedModule& pm, const std::vector<TaskFactors>& f, int threads) {
  const auto n = static_cast<long>(f.size());
  SideGrams g;
  for (int side = 0; side < 2; ++side) {
    g.x[side].resize(f.size());
    g.xx[side].resize(f.size());
    g.x_sq[side].resize(f.size());
  }
  parallel_tasks(2 * n, threads, [&](long i) {
    const int side = static_cast<int>(i / n);
    const auto t = static_cast<std::size_t>(i % n);
    g.x[side][t] = positions(pm, f[t], side);
    g.xx[side][t] = self_gram(g.x[side][t], side_rows(pm, side), pm.rank);
    g.x_sq[side][t] = trace(g.xx[side][t], pm.rank);
  });
  return g;
}

namespace {

// One side's stored basis with each direction contiguous: m × P × r (it is stored m × r × P,
// direction last), so sweeping a direction over the positions reads memory in order. Shared
// by the side's tasks.
template <class T>
std::vector<T> directions_by_position(const RmmSide& stored, i64 m, i64 r, i64 stored_p) {
  std::vector<T> out(static_cast<std::size_t>(m * stored_p * r));
  for (i64 j = 0; j < m; ++j)
    for (i64 k = 0; k < r; ++k)
      for (i64 q = 0; q < stored_p; ++q)
        out[(j * stored_p + q) * r + k] = stored.basis[(j * r + k) * stored_p + q];
  return out;
}

// Row j − j0 of D (stride `ld`) += directions [from, to) at position j, each scaled by task t's
// coefficient there, for positions j0 … j1 − 1: one sweep over D whatever the number of
// directions.
template <class T>
void add_directions(T* d, i64 ld, const std::vector<T>& directions, const RmmSide& stored, i64 j0, i64 j1, i64 r,
                    i64 stored_p, i64 n, i64 from, i64 to, i64 t) {
  if (from >= to) return;
  for (i64 j = j0; j < j1; ++j) {
    T* row = d + (j - j0) * ld;
    for (i64 q = from; q < to; ++q) {
      const T c = stored.coef[(j * stored_p + q) * n + t];
      const T* v = directions.data() + (j * stored_p + q) * r;
      for (i64 k = 0; k < r; ++k) row[k] += v[k] * c;
    }
  }
}

// The candidates' Grams, estimated (what the allocation weighs): D kept in f32 beside X as
// [D | X], one single-precision GEMM Dᵀ[D | X] giving DᵀD and DᵀX at each p. Every term of the
// delta error is of the error's own size (no cancellation against ‖ΔW‖²), so f32 keeps about 6
// digits of each; D's own f32 sums lose digits only where D is at the inputs' rounding level,
// where no option is told apart by its error. The positions go in blocks small enough to stay
// in cache while every p's directions are added and its GEMM reads them (a whole side's D per p
// made the sweep wait on memory), the GEMMs adding each block into every p's Grams.
void estimate_side(const std::vector<double>& x, const RmmSide& stored, const std::vector<float>& directions,
                   i64 m, i64 r, i64 stored_p, i64 n, i64 t, const std::vector<i64>& ps,
                   std::vector<SideDifference>& out) {
  constexpr i64 kBlock = 256;
  std::vector<float> dx(static_cast<std::size_t>(std::min(m, kBlock) * 2 * r));
  std::vector<std::vector<float>> g(ps.size(), std::vector<float>(static_cast<std::size_t>(2 * r * r), 0.0f));
  for (i64 j0 = 0; j0 < m; j0 += kBlock) {
    const i64 j1 = std::min(m, j0 + kBlock);
    for (i64 j = j0; j < j1; ++j)
      for (i64 k = 0; k < r; ++k) {
        dx[(j - j0) * 2 * r + k] = static_cast<float>(double(stored.mean[j * r + k]) - x[j * r + k]);
        dx[(j - j0) * 2 * r + r + k] = static_cast<float>(x[j * r + k]);
      }
    i64 q = 0;
    for (std::size_t i = 0; i < ps.size(); ++i) {
      add_directions(dx.data(), 2 * r, directions, stored, j0, j1, r, stored_p, n, q, ps[i], t);
      q = std::max(q, ps[i]);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, 2 * r, j1 - j0, 1.0f, dx.data(), 2 * r, dx.data(),
                  2 * r, 1.0f, g[i].data(), 2 * r);
    }
  }
  for (std::size_t i = 0; i < ps.size(); ++i) {
    auto& dd = out[i].dd[t];
    auto& dxg = out[i].dx[t];
    dd.resize(static_cast<std::size_t>(r * r));
    dxg.resize(static_cast<std::size_t>(r * r));
    for (i64 a = 0; a < r; ++a)
      for (i64 b = 0; b < r; ++b) {
        dd[a * r + b] = g[i][a * 2 * r + b];
        dxg[a * r + b] = g[i][a * 2 * r + r + b];
      }
  }
}

// The reported errors: D in f64, its Grams in f64.
void exact_side(const std::vector<double>& x, const RmmSide& stored, const std::vector<double>& directions, i64 m,
                i64 r, i64 stored_p, i64 n, i64 t, const std::vector<i64>& ps, std::vector<SideDifference>& out) {
  std::vector<double> d(x.size());
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = double(stored.mean[i]) - x[i];
  i64 q = 0;
  for (std::size_t i = 0; i < ps.size(); ++i) {
    add_directions(d.data(), r, directions, stored, 0, m, r, stored_p, n, q, ps[i], t);
    q = std::max(q, ps[i]);
    out[i].dd[t] = self_gram(d, m, r);
    out[i].dx[t] = gram(d, x, m, r);
  }
}

}  // namespace

std::vector<SideDifference> side_differences(const PlannedModule& pm, const SideGrams& grams, int side,
                                             const RmmSide& stored, i64 stored_p,
                                             const std::vector<i64>& ps, int threads, bool estimate) {
  const i64 r = pm.rank, m = side_rows(pm, side), n = static_cast<i64>(grams.x[side].size());
  std::vector<SideDifference> out(ps.size());
  for (std::size_t i = 0; i < ps.size(); ++i) {
    out[i].p = ps[i];
    out[i].dd.resize(static_cast<std::size_t>(n));
    out[i].dx.resize(static_cast<std::size_t>(n));
    out[i].d_sq.resize(static_cast<std::size_t>(n));
  }
  std::vector<float> dir32;
  std::vector<double> dir64;
  if (estimate) dir32 = directions_by_position<float>(stored, m, r, stored_p);
  else dir64 = directions_by_position<double>(stored, m, r, stored_p);
  parallel_tasks(n, threads, [&](long t) {
    const auto& x = grams.x[side][t];
    if (estimate) estimate_side(x, stored, dir32, m, r, stored_p, n, t, ps, out);
    else exact_side(x, stored, dir64, m, r, stored_p, n, t, ps, out);
    for (auto& o : out) o.d_sq[t] = trace(o.dd[t], r);
  });
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
