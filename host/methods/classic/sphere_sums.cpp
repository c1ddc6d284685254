// The spherical methods' statistics (piece_merge.hpp's SphereSums): the Gram sums of the models'
// vectors over a tensor, kept in each statistics block's lanes, and what karcher and multislerp
// decide from them — mergekit's iterations run on the vectors' coefficients, not on the vectors.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/elementwise.hpp"
#include "methods/classic/lanes8.hpp"
#include "methods/classic/piece_merge.hpp"
#include "revmerge/error.hpp"

namespace revmerge {

using i64 = std::int64_t;
using Vec = std::vector<double>;

namespace {

// The Gram matrix G of n unit vectors u_i (row-major), on coefficients c of Σ_i c_i u_i.
struct UnitGram {
  std::size_t n;
  std::vector<double> g;
  double times(const Vec& c, std::size_t i) const {  // (G c)_i = u_i · Σ_j c_j u_j
    double s = 0;
    for (std::size_t j = 0; j < n; ++j) s += g[i * n + j] * c[j];
    return s;
  }
  double norm(const Vec& c) const {  // ‖Σ_i c_i u_i‖ (rounding can take a tiny square below 0)
    double s = 0;
    for (std::size_t i = 0; i < n; ++i) s += c[i] * times(c, i);
    return std::sqrt(std::max(s, 0.0));
  }
};

}  // namespace

// The mean m = Σ_v c_v u_v of the valid models' directions u_v = x_v / ‖x_v‖ (‖x_v‖ > tol)
// stays in their span: the first mean is their average, each step's tangent
// Σ_v f_v (u_v − d_v m) has coefficients f − (Σ_v f_v d_v) c, and every dot product and norm a
// step takes (d_v = m · u_v, ‖t‖, ‖m‖) is a quadratic form in the unit Gram matrix
// G_vw = u_v · u_w. So mergekit's iteration runs here on V coefficients, in the order karcher()
// took it on whole vectors: equal weights a = 1 / V, the first mean normalised (u_0 where its
// norm is below tol), at most max_iter steps of angle θ_v = acos(clamp(d_v)) (a model within tol
// of the mean left out), stopping where ‖t‖ < tol, the moved mean normalised where its norm
// exceeds tol; then scaled by every model's mean norm.
std::vector<double> karcher_coefficients(const std::vector<double>& gram, std::size_t models, i64 max_iter,
                                         double tol) {
  const auto m = static_cast<int>(models);
  std::vector<double> sums(models * models);
  for (int q = 0; q < kernels::stock_sums(m); ++q) {
    int a, b;
    kernels::stock_pair(m, q, a, b);
    sums[a * models + b] = sums[b * models + a] = gram[q];
  }
  std::vector<double> norms(models), coef(models, 0.0);
  std::vector<std::size_t> valid;
  double scale = 0;  // every model's norm counts here, the vanishing ones too (as mergekit)
  for (std::size_t i = 0; i < models; ++i) {
    norms[i] = std::sqrt(sums[i * models + i]);
    if (norms[i] > tol) valid.push_back(i);
    scale += (1.0 / double(models)) * norms[i];
  }
  if (valid.empty()) return coef;
  const std::size_t n = valid.size();
  UnitGram g{n, std::vector<double>(n * n)};
  for (std::size_t v = 0; v < n; ++v)
    for (std::size_t w = 0; w < n; ++w)
      g.g[v * n + w] = sums[valid[v] * models + valid[w]] / (norms[valid[v]] * norms[valid[w]]);
  const auto times = [&](const Vec& c, std::size_t v) { return g.times(c, v); };
  const auto norm = [&](const Vec& c) { return g.norm(c); };
  const double a = 1.0 / double(n);
  Vec c(n, a);
  const double mn = norm(c);
  if (mn < tol) {
    std::fill(c.begin(), c.end(), 0.0);
    c[0] = 1;
  } else {
    for (auto& v : c) v /= mn;
  }
  Vec d(n), tangent(n);
  for (i64 it = 0; it < max_iter; ++it) {
    double fd = 0;
    for (std::size_t v = 0; v < n; ++v) {
      d[v] = std::clamp(times(c, v), -1.0, 1.0);
      const double theta = std::acos(d[v]);
      tangent[v] = theta < tol ? 0.0 : a * theta / std::sin(theta);
      fd += tangent[v] * d[v];
    }
    for (std::size_t v = 0; v < n; ++v) tangent[v] -= fd * c[v];
    const double tn = norm(tangent);
    if (tn < tol) break;
    for (std::size_t v = 0; v < n; ++v) c[v] = std::cos(tn) * c[v] + std::sin(tn) * (tangent[v] / tn);
    const double un = norm(c);
    if (un > tol)
      for (auto& v : c) v /= un;
  }
  for (std::size_t v = 0; v < n; ++v) coef[valid[v]] = c[v] * scale / norms[valid[v]];
  return coef;
}

// multislerp's map on the sphere, on the coefficients of its vectors v_i (task vectors where
// there is a base): their directions u_i = v_i / (‖v_i‖ + eps) have the Gram matrix
// G_ij = (v_i · v_j) / ((‖v_i‖ + eps)(‖v_j‖ + eps)); the weighted mean Σ w_i u_i has norm
// √(wᵀGw), normalised its coefficients are c = w / ‖m‖; each direction's dot with it is (Gc)_i;
// the weighted tangent Σ w_i (u_i − d_i m) has coefficients w − (Σ w_i d_i) c and its norm plus
// eps is τ; the result (m cos τ + t sin τ / τ) · Σ w_i ‖v_i‖ is mergekit's, divided back into
// coefficients of the v_i. Where the mean vanishes two vectors are blended linearly (w₀, w₁).
std::vector<double> multislerp_coefficients(const std::vector<double>& gram, const std::vector<double>& w, double eps,
                                            const std::string& tensor) {
  const std::size_t n = w.size();
  const auto m = static_cast<int>(n);
  std::vector<double> norms(n);
  UnitGram g{n, std::vector<double>(n * n)};
  for (std::size_t i = 0; i < n; ++i) norms[i] = std::sqrt(gram[i]);
  for (int q = 0; q < kernels::stock_sums(m); ++q) {
    int a, b;
    kernels::stock_pair(m, q, a, b);
    g.g[a * n + b] = g.g[b * n + a] = gram[q] / ((norms[a] + eps) * (norms[b] + eps));
  }
  const auto times = [&](const Vec& c, std::size_t i) { return g.times(c, i); };
  const auto norm = [&](const Vec& c) { return g.norm(c); };
  const double mean_norm = norm(w);
  if (mean_norm < eps) {
    if (n != 2)
      throw format_error("tensor '" + tensor + "': the weighted mean of the models' directions is 0 "
                         "(antipodal models whose weights balance); multislerp cannot merge it — "
                         "try other weights");
    return w;
  }
  Vec c(n), tangent(w);
  for (std::size_t i = 0; i < n; ++i) c[i] = w[i] / mean_norm;
  double wd = 0;
  for (std::size_t i = 0; i < n; ++i) wd += w[i] * times(c, i);
  for (std::size_t i = 0; i < n; ++i) tangent[i] -= wd * c[i];
  const double tn = norm(tangent) + eps;
  double scale = 0;
  for (std::size_t i = 0; i < n; ++i) scale += norms[i] * w[i];
  Vec coef(n);
  for (std::size_t i = 0; i < n; ++i)
    coef[i] = (c[i] * std::cos(tn) + tangent[i] * (std::sin(tn) / tn)) * scale / (norms[i] + eps);
  return coef;
}

SphereSums::SphereSums(i64 count, int vectors, bool task_vectors, Decide decide)
    : vectors_(vectors), task_vectors_(task_vectors), decide_(std::move(decide)),
      blocks_((count + kernels::kStatBlock - 1) / kernels::kStatBlock),
      lanes_(static_cast<std::size_t>(kernels::stock_sums(vectors) * blocks_ * kernels::kStatLanes), 0.0) {}

kernels::ElementwiseStep SphereSums::step(i64 first, i64 count, float* tasks, float* base, double* lanes) const {
  kernels::ElementwiseStep st;
  st.kind = kernels::ElementwiseKind::gram_lanes;
  st.first = first;
  st.count = count;
  st.n = vectors_ - (base && !task_vectors_ ? 1 : 0);
  st.x = tasks;
  st.base = base;
  st.has_base = base != nullptr;
  st.task_vectors = task_vectors_;
  st.stock = lanes;
  st.stock_stride = stride();
  return st;
}

kernels::ElementwiseStep SphereSums::blend(i64 count, float* tasks, float* base, const double* table, float* out) const {
  auto st = step(0, count, tasks, base, nullptr);
  st.kind = kernels::ElementwiseKind::gram_blend;
  st.coef = table;
  st.out = out;
  return st;
}

void SphereSums::end_pass() {
  std::vector<double> gram(static_cast<std::size_t>(kernels::stock_sums(vectors_)));
  for (std::size_t q = 0; q < gram.size(); ++q) gram[q] = kernels::lanes_total(lanes_.data() + q * stride(), blocks_);
  table_ = decide_(gram);
  summed_ = true;
}

SphereSums sphere_sums(const ClassicMergeOptions& o, const std::string& name, i64 count, std::size_t n, bool has_base) {
  if (o.method == ClassicMethod::multislerp) {
    auto w = spherical_weights(o, name);
    const double eps = o.eps.value_or(1e-8);
    return SphereSums(count, static_cast<int>(n), has_base, [w, eps, name](const std::vector<double>& gram) {
      return multislerp_coefficients(gram, w, eps, name);
    });
  }
  const std::size_t models = n + (has_base ? 1 : 0);
  const i64 max_iter = o.max_iter.value_or(10);
  const double tol = o.tol.value_or(1e-5);
  return SphereSums(count, static_cast<int>(models), false, [=](const std::vector<double>& gram) {
    return karcher_coefficients(gram, models, max_iter, tol);
  });
}

namespace {

// The sums' vector pairs of V vectors (kernels::stock_pair's), fixed at compile time.
template <int V>
struct GramPairs {
  static constexpr int kSums = kernels::stock_sums(V);
  int a[kSums] = {}, b[kSums] = {};
  constexpr GramPairs() {
    for (int q = 0; q < kSums; ++q) kernels::stock_pair(V, q, a[q], b[q]);
  }
};

// gram_lanes_run's elements [first, block_end) of one block for V vectors, every sum at once:
// each vector's eight values widened (less the base's) once for all its sums, where the general
// loop makes both of a pair's again for each sum (a fifth of a model_stock merge's time, 3
// fine-tunes). Each sum's lanes take the same products in the same order: the same bits.
template <int V>
[[gnu::always_inline]] inline void gram_lanes_block(double* const* at, i64 a, const float* const* x, const float* base,
                                                    i64 first, i64 block_end) {
  constexpr i64 L = kernels::kStatLanes;
  constexpr GramPairs<V> pairs;
  constexpr int S = GramPairs<V>::kSums;
  const auto value = [&](int v, i64 e) { return base ? double(x[v][e - a]) - double(base[e - a]) : double(x[v][e - a]); };
  const auto one = [&](i64 e) {
    for (int q = 0; q < S; ++q) at[q][e % L] += value(pairs.a[q], e) * value(pairs.b[q], e);
  };
  i64 i = first;
  for (; i < block_end && i % L != 0; ++i) one(i);
  Lanes t[S];
  for (int q = 0; q < S; ++q) std::memcpy(&t[q], at[q], sizeof(Lanes));
  for (; i + L <= block_end; i += L) {
    Lanes v[V];
#pragma GCC unroll 8
    for (int k = 0; k < V; ++k) widen8(v[k], x[k] + (i - a));
    if (base) {
      Lanes b;
      widen8(b, base + (i - a));
#pragma GCC unroll 8
      for (int k = 0; k < V; ++k) v[k] -= b;
    }
#pragma GCC unroll 16
    for (int q = 0; q < S; ++q) t[q] += v[pairs.a[q]] * v[pairs.b[q]];
  }
  for (int q = 0; q < S; ++q) std::memcpy(at[q], &t[q], sizeof(Lanes));
  for (; i < block_end; ++i) one(i);
}

// Vectors whose sums gram_lanes_block takes at once: 4 (karcher over 3 fine-tunes and the
// base) has 10 sums, 14 vectors in registers with the values and the base; 5 would have 21.
constexpr int kGramAtOnce = 4;

}  // namespace

#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void gram_lanes_run(double* lanes, i64 stride, int vectors, i64 a, const float* const* x, const float* base, i64 m,
                    i64 block_size) {
  constexpr i64 L = kernels::kStatLanes;
  constexpr int G = kernels::kStockGroup;
  const int all = kernels::stock_sums(vectors);
  const i64 end = a + m;
  if (vectors >= 2 && vectors <= kGramAtOnce) {
    double* at[kernels::stock_sums(kGramAtOnce)];
    for (i64 first = a; first < end;) {
      const i64 block = first / block_size;
      const i64 block_end = std::min(end, (block + 1) * block_size);
      for (int q = 0; q < all; ++q) at[q] = lanes + q * stride + block * L;
      if (vectors == 2) gram_lanes_block<2>(at, a, x, base, first, block_end);
      else if (vectors == 3) gram_lanes_block<3>(at, a, x, base, first, block_end);
      else gram_lanes_block<4>(at, a, x, base, first, block_end);
      first = block_end;
    }
    return;
  }
  for (i64 first = a; first < end;) {
    const i64 block = first / block_size;
    const i64 block_end = std::min(end, (block + 1) * block_size);
    for (int q0 = 0; q0 < all; q0 += G) {  // kStockGroup sums at a time, as the step's indices
      const int sums = std::min(G, all - q0);
      const float* pa[G] = {};
      const float* pb[G] = {};
      double* at[G] = {};
      for (int k = 0; k < sums; ++k) {
        int ia, ib;
        kernels::stock_pair(vectors, q0 + k, ia, ib);
        pa[k] = x[ia];
        pb[k] = x[ib];
        at[k] = lanes + (q0 + k) * stride + block * L;
      }
      const auto value = [&](const float* v, i64 e) {
        return base ? double(v[e - a]) - double(base[e - a]) : double(v[e - a]);
      };
      const auto one = [&](i64 e) {
        for (int k = 0; k < sums; ++k) at[k][e % L] += value(pa[k], e) * value(pb[k], e);
      };
      i64 i = first;
      for (; i < block_end && i % L != 0; ++i) one(i);
      Lanes t[G] = {};
      for (int k = 0; k < sums; ++k) std::memcpy(&t[k], at[k], sizeof(Lanes));
      for (; i + L <= block_end; i += L) {
        Lanes b = {};
        if (base) widen8(b, base + (i - a));
#pragma GCC unroll 8
        for (int k = 0; k < G; ++k) {
          if (k >= sums) break;
          Lanes va, vb;
          widen8(va, pa[k] + (i - a));
          widen8(vb, pb[k] + (i - a));
          if (base) {
            va -= b;
            vb -= b;
          }
          t[k] += va * vb;
        }
      }
      for (int k = 0; k < sums; ++k) std::memcpy(at[k], &t[k], sizeof(Lanes));
      for (; i < block_end; ++i) one(i);
    }
    first = block_end;
  }
}

}  // namespace revmerge
