// The low-rank re-factorisations against dense double arithmetic: Σ cᵢBᵢAᵢ comes back exactly at
// full rank, and at a lower rank the error is the Eckart–Young error from the reference's own
// eigenvalues of DᵀD; A' has orthonormal rows.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "methods/lowrank/refactor.hpp"
#include "reference/rmm_reference.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

struct Term {
  std::vector<float> b, a;
  i64 rank;
  double c;
};

std::vector<double> dense(const std::vector<Term>& terms, i64 out, i64 in) {
  std::vector<double> d(static_cast<std::size_t>(out * in), 0.0);
  for (const auto& t : terms)
    for (i64 o = 0; o < out; ++o)
      for (i64 k = 0; k < t.rank; ++k)
        for (i64 i = 0; i < in; ++i) d[o * in + i] += t.c * t.b[o * t.rank + k] * t.a[k * in + i];
  return d;
}

// Σ_{k > rank} σ_k² of d, from the reference Jacobi eigenvalues of dᵀd.
double tail_energy(const std::vector<double>& d, i64 out, i64 in, i64 rank) {
  std::vector<double> g(static_cast<std::size_t>(in * in), 0.0);
  for (i64 i = 0; i < in; ++i)
    for (i64 j = 0; j < in; ++j)
      for (i64 o = 0; o < out; ++o) g[i * in + j] += d[o * in + i] * d[o * in + j];
  const auto e = reference::jacobi_eigen(g, static_cast<int>(in));
  double tail = 0;
  for (i64 k = rank; k < in; ++k) tail += std::max(e.values[k], 0.0);
  return tail;
}

double error_sq(const std::vector<double>& d, const LowRankFactors& f, i64 out, i64 in) {
  double e = 0;
  for (i64 o = 0; o < out; ++o)
    for (i64 i = 0; i < in; ++i) {
      double v = 0;
      for (i64 k = 0; k < f.rank; ++k) v += double(f.b[o * f.rank + k]) * f.a[k * in + i];
      e += (v - d[o * in + i]) * (v - d[o * in + i]);
    }
  return e;
}

class Refactor : public ::testing::TestWithParam<std::tuple<i64, i64, i64>> {};

TEST_P(Refactor, SumAndDenseMeetEckartYoung) {
  const auto [out, in, target] = GetParam();
  std::mt19937_64 rng(out * 100 + in);
  std::normal_distribution<float> normal;
  std::vector<Term> terms;
  for (const auto [r, c] : {std::pair<i64, double>{3, 1.0}, {2, -0.5}, {4, 2.0}}) {
    Term t{std::vector<float>(out * r), std::vector<float>(r * in), r, c};
    for (auto& v : t.b) v = normal(rng);
    for (auto& v : t.a) v = normal(rng);
    terms.push_back(std::move(t));
  }
  std::vector<LowRankTerm> lr;
  for (const auto& t : terms) lr.push_back({t.b, t.a, t.rank, t.c});
  const auto d = dense(terms, out, in);
  double norm = 0;
  for (const auto v : d) norm += v * v;
  const double best = tail_energy(d, out, in, target);
  const auto from_sum = refactor_sum(lr, out, in, target);
  std::vector<float> df(d.begin(), d.end());
  const auto from_dense = refactor_dense(df, out, in, target);
  for (const auto* f : {&from_sum, &from_dense}) {
    ASSERT_EQ(f->rank, target);
    EXPECT_NEAR(error_sq(d, *f, out, in), best, 1e-5 * norm) << "seed " << out * 100 + in;
    const i64 nonzero = std::min({target, out, in, i64{9}});
    for (i64 p = 0; p < nonzero; ++p)  // A' rows orthonormal (zero rows past the sum's rank)
      for (i64 q = 0; q < nonzero; ++q) {
        double dot = 0;
        for (i64 i = 0; i < in; ++i) dot += double(f->a[p * in + i]) * f->a[q * in + i];
        EXPECT_NEAR(dot, p == q ? 1.0 : 0.0, 1e-5) << p << "," << q;
      }
  }
}

// (out, in, target rank); the sum has rank 9 at most.
INSTANTIATE_TEST_SUITE_P(Shapes, Refactor,
                         ::testing::Values(std::tuple<i64, i64, i64>{12, 10, 4},
                                           std::tuple<i64, i64, i64>{7, 13, 9},
                                           std::tuple<i64, i64, i64>{20, 16, 12},
                                           std::tuple<i64, i64, i64>{5, 5, 1},
                                           std::tuple<i64, i64, i64>{1, 8, 1}));

TEST(Refactor, EmptySumGivesZeros) {
  const auto f = refactor_sum({}, 4, 3, 2);
  EXPECT_EQ(f.b, std::vector<float>(8, 0.0f));
  EXPECT_EQ(f.a, std::vector<float>(6, 0.0f));
}

}  // namespace
}  // namespace revmerge
