// multislerp and karcher on their vectors' coefficients, decided from the Gram matrix
// (multislerp_coefficients, karcher_coefficients: piece_merge.hpp), against mergekit's maps
// written out plainly on whole vectors in double precision. karcher: the same mean wherever the
// steps run (far apart models that take every step, near-identical fine-tunes, a model within
// tol of zero, a first mean that vanishes, a stop at the first step); multislerp: near and far
// models, weights that do not sum to 1, the two-model fallback and the refusal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/elementwise.hpp"
#include "methods/classic/piece_merge.hpp"

namespace revmerge {
namespace {

using Vec = std::vector<double>;

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t k = 0; k < a.size(); ++k) s += a[k] * b[k];
  return s;
}

// mergekit's karcher as it reads: unit vectors, their average normalised, then Riemannian steps
// on whole vectors; `steps` counts those taken.
Vec direct_karcher(const std::vector<Vec>& x, int max_iter, double tol, int& steps) {
  const std::size_t m = x[0].size();
  std::vector<Vec> unit;
  double scale = 0;
  for (const auto& v : x) {
    const double n = std::sqrt(dot(v, v));
    scale += n / double(x.size());
    if (n <= tol) continue;
    Vec u(m);
    for (std::size_t k = 0; k < m; ++k) u[k] = v[k] / n;
    unit.push_back(std::move(u));
  }
  steps = 0;
  if (unit.empty()) return Vec(m, 0.0);
  const double a = 1.0 / double(unit.size());
  Vec mean(m, 0.0);
  for (const auto& u : unit)
    for (std::size_t k = 0; k < m; ++k) mean[k] += a * u[k];
  const double mn = std::sqrt(dot(mean, mean));
  if (mn < tol) mean = unit[0];
  else
    for (auto& v : mean) v /= mn;
  for (int it = 0; it < max_iter; ++it) {
    Vec t(m, 0.0);
    for (const auto& u : unit) {
      const double d = std::clamp(dot(mean, u), -1.0, 1.0), theta = std::acos(d);
      if (theta < tol) continue;
      for (std::size_t k = 0; k < m; ++k) t[k] += a * theta / std::sin(theta) * (u[k] - d * mean[k]);
    }
    const double tn = std::sqrt(dot(t, t));
    if (tn < tol) break;
    for (std::size_t k = 0; k < m; ++k) mean[k] = std::cos(tn) * mean[k] + std::sin(tn) * t[k] / tn;
    const double un = std::sqrt(dot(mean, mean));
    if (un > tol)
      for (auto& v : mean) v /= un;
    ++steps;
  }
  for (auto& v : mean) v *= scale;
  return mean;
}

// mergekit's multislerp as it reads, on whole vectors.
Vec direct_multislerp(const std::vector<Vec>& x, const std::vector<double>& w, double eps) {
  const std::size_t m = x[0].size();
  std::vector<Vec> unit;
  Vec mean(m, 0.0);
  double scale = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double n = std::sqrt(dot(x[i], x[i]));
    scale += n * w[i];
    Vec u(m);
    for (std::size_t k = 0; k < m; ++k) {
      u[k] = x[i][k] / (n + eps);
      mean[k] += w[i] * u[k];
    }
    unit.push_back(std::move(u));
  }
  const double mn = std::sqrt(dot(mean, mean));
  for (auto& v : mean) v /= mn;
  Vec t(m, 0.0);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double d = dot(unit[i], mean);
    for (std::size_t k = 0; k < m; ++k) t[k] += w[i] * (unit[i][k] - d * mean[k]);
  }
  const double tn = std::sqrt(dot(t, t)) + eps;
  Vec out(m);
  for (std::size_t k = 0; k < m; ++k) out[k] = (mean[k] * std::cos(tn) + t[k] * std::sin(tn) / tn) * scale;
  return out;
}

std::vector<double> gram_of(const std::vector<Vec>& x) {
  const int models = static_cast<int>(x.size());
  std::vector<double> gram(static_cast<std::size_t>(kernels::stock_sums(models)));
  for (int q = 0; q < kernels::stock_sums(models); ++q) {
    int a, b;
    kernels::stock_pair(models, q, a, b);
    gram[q] = dot(x[a], x[b]);
  }
  return gram;
}

Vec combined(const std::vector<Vec>& x, const std::vector<double>& coef) {
  Vec out(x[0].size(), 0.0);
  for (std::size_t q = 0; q < x.size(); ++q)
    for (std::size_t k = 0; k < out.size(); ++k) out[k] += coef[q] * x[q][k];
  return out;
}

Vec by_coefficients(const std::vector<Vec>& x, int max_iter, double tol) {
  return combined(x, karcher_coefficients(gram_of(x), x.size(), max_iter, tol));
}

// The largest difference relative to the result's largest magnitude.
double relative_gap(const Vec& a, const Vec& b) {
  double gap = 0, top = 0;
  for (std::size_t k = 0; k < a.size(); ++k) {
    gap = std::max(gap, std::fabs(a[k] - b[k]));
    top = std::max(top, std::fabs(b[k]));
  }
  return top == 0 ? gap : gap / top;
}

// `models` vectors of `size`: a shared part plus `spread` times one of their own.
std::vector<Vec> models_around(std::size_t models, std::size_t size, double spread, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  Vec shared(size);
  for (auto& v : shared) v = normal(rng);
  std::vector<Vec> x(models, shared);
  for (auto& v : x)
    for (auto& e : v) e += spread * normal(rng);
  return x;
}

struct Case {
  const char* name;
  std::vector<Vec> x;
  int max_iter;
  double tol;
  int least_steps;  // the direct iteration takes at least this many: the case exercises them
};

TEST(KarcherCoefficients, TheSameMeanAsTheIterationOnWholeVectors) {
  auto with_zero = models_around(4, 3000, 0.8, 3);
  std::fill(with_zero[2].begin(), with_zero[2].end(), 0.0);
  // Three directions 120° apart in a plane: their average is 0, the first mean falls back to the
  // first direction, a point where the tangent vanishes.
  auto plane = models_around(2, 3000, 1.0, 4);
  const double along = dot(plane[1], plane[0]) / dot(plane[0], plane[0]);
  for (std::size_t k = 0; k < plane[1].size(); ++k) plane[1][k] -= along * plane[0][k];
  for (auto& e : plane) {
    const double n = std::sqrt(dot(e, e));
    for (auto& v : e) v /= n;
  }
  std::vector<Vec> star(3, Vec(3000));
  for (int i = 0; i < 3; ++i)
    for (std::size_t k = 0; k < 3000; ++k)
      star[i][k] = (1.0 + i) * (std::cos(2 * M_PI * i / 3) * plane[0][k] + std::sin(2 * M_PI * i / 3) * plane[1][k]);
  const std::vector<Case> cases = {
      {"far apart, every step", models_around(3, 3000, 3.0, 1), 10, 1e-12, 3},
      {"many models, every step", models_around(9, 2000, 2.0, 2), 25, 1e-12, 3},
      {"near-identical fine-tunes", models_around(4, 5000, 0.01, 5), 10, 1e-9, 0},
      {"one model within tol of 0", with_zero, 10, 1e-12, 2},
      {"a first mean that vanishes", star, 5, 1e-9, 0},
      {"stopped by tol at once", models_around(3, 3000, 0.5, 6), 10, 1e-1, 0},
      {"one step", models_around(5, 3000, 1.0, 7), 1, 1e-12, 1},
  };
  for (const auto& c : cases) {
    int steps = 0;
    const Vec want = direct_karcher(c.x, c.max_iter, c.tol, steps);
    EXPECT_GE(steps, c.least_steps) << c.name;
    EXPECT_LT(relative_gap(by_coefficients(c.x, c.max_iter, c.tol), want), 1e-12) << c.name;
  }
}

TEST(KarcherCoefficients, EveryModelWithinTolOfZeroGivesZeros) {
  const auto coef = karcher_coefficients({1e-20, 1e-20, 0.0}, 2, 10, 1e-5);
  EXPECT_EQ(coef, (std::vector<double>{0.0, 0.0}));
}

TEST(MultislerpCoefficients, TheSameMapAsOnWholeVectors) {
  struct Mix {
    const char* name;
    std::vector<Vec> x;
    std::vector<double> w;
  };
  const std::vector<Mix> mixes = {
      {"far apart", models_around(3, 3000, 3.0, 11), {0.5, 0.25, 0.25}},
      {"near-identical", models_around(4, 5000, 0.01, 12), {0.4, 0.3, 0.2, 0.1}},
      {"weights not summing to 1", models_around(5, 2000, 1.0, 13), {1.0, 0.5, 0.5, 2.0, 0.25}},
      {"two", models_around(2, 3000, 1.5, 14), {0.7, 0.3}},
  };
  for (const auto& c : mixes)
    EXPECT_LT(relative_gap(combined(c.x, multislerp_coefficients(gram_of(c.x), c.w, 1e-8, "w")),
                           direct_multislerp(c.x, c.w, 1e-8)),
              1e-12)
        << c.name;
}

TEST(MultislerpCoefficients, AVanishingMeanBlendsTwoLinearlyAndRefusesMore) {
  auto v = models_around(1, 100, 0.0, 15)[0], opposite = v;
  for (auto& e : opposite) e = -e;
  EXPECT_EQ(multislerp_coefficients(gram_of({v, opposite}), {0.5, 0.5}, 1e-8, "w"), (std::vector<double>{0.5, 0.5}));
  try {
    multislerp_coefficients(gram_of({v, opposite, Vec(100, 0.0)}), {0.5, 0.5, 0.0}, 1e-8, "model.x.weight");
    FAIL() << "three vectors whose mean vanishes were merged";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'model.x.weight'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace revmerge
