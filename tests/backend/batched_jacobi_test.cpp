// The CPU backend's batched Jacobi eigensolver against LAPACK's dsyevd.
#include <gtest/gtest.h>
#include <lapacke.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/batched_jacobi.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// A random symmetric matrix with eigenvalues `lambda`: Q diag(λ) Qᵀ, Q from a QR of noise.
std::vector<double> with_spectrum(const std::vector<double>& lambda, unsigned seed) {
  const i64 n = static_cast<i64>(lambda.size());
  std::mt19937 rng(seed);
  std::normal_distribution<double> g;
  std::vector<double> q(static_cast<std::size_t>(n * n)), tau(static_cast<std::size_t>(n));
  for (auto& x : q) x = g(rng);
  LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, n, n, q.data(), n, tau.data());
  LAPACKE_dorgqr(LAPACK_ROW_MAJOR, n, n, n, q.data(), n, tau.data());
  std::vector<double> a(static_cast<std::size_t>(n * n), 0.0);
  for (i64 i = 0; i < n; ++i)
    for (i64 j = 0; j <= i; ++j) {
      double s = 0;
      for (i64 k = 0; k < n; ++k) s += q[i * n + k] * lambda[k] * q[j * n + k];
      a[i * n + j] = a[j * n + i] = s;
    }
  return a;
}

// Matrices of n × n (as f32, what the backend is given), solved in one batch; each compared with
// dsyevd on the same f32 values: eigenvalues, A v = λ v, orthonormal rows.
void expect_matches_lapack(const std::vector<std::vector<double>>& mats, i64 n, const char* what) {
  const i64 batch = static_cast<i64>(mats.size());
  std::vector<float> a;
  for (const auto& m : mats)
    for (double x : m) a.push_back(static_cast<float>(x));
  const auto input = a;
  std::vector<float> w(static_cast<std::size_t>(batch * n));
  ASSERT_EQ(batched_jacobi_eigen(a.data(), w.data(), n, 0, batch), -1) << what;
  for (i64 b = 0; b < batch; ++b) {
    std::vector<double> ref(input.begin() + b * n * n, input.begin() + (b + 1) * n * n);
    const auto original = ref;
    std::vector<double> ref_w(static_cast<std::size_t>(n));
    ASSERT_EQ(LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', n, ref.data(), n, ref_w.data()), 0);
    double scale = 1e-30;
    for (double x : ref_w) scale = std::max(scale, std::fabs(x));
    const float* v = a.data() + b * n * n;
    for (i64 k = 0; k < n; ++k) {
      // f32 outputs: agreement to f32 rounding of the largest eigenvalue.
      EXPECT_NEAR(w[b * n + k], ref_w[k], 2e-7 * scale) << what << " matrix " << b << " λ" << k;
      for (i64 i = 0; i < n; ++i) {
        double av = 0;
        for (i64 j = 0; j < n; ++j) av += original[i * n + j] * v[k * n + j];
        EXPECT_NEAR(av, double(w[b * n + k]) * v[k * n + i], 1e-6 * scale) << what << " residual";
      }
      for (i64 l = 0; l < n; ++l) {
        double dot = 0;
        for (i64 i = 0; i < n; ++i) dot += double(v[k * n + i]) * v[l * n + i];
        EXPECT_NEAR(dot, k == l ? 1.0 : 0.0, 1e-6) << what;
      }
    }
  }
}

TEST(BatchedJacobi, MatchesLapackOnRandomGradedRepeatedAndZeroSpectra) {
  for (const i64 n : {1, 2, 3, 5, 8, 13, 16}) {
    std::vector<std::vector<double>> mats;
    std::mt19937 rng(static_cast<unsigned>(n));
    std::normal_distribution<double> g;
    for (int r = 0; r < 3; ++r) {
      std::vector<double> m(static_cast<std::size_t>(n * n));
      for (i64 i = 0; i < n; ++i)
        for (i64 j = 0; j <= i; ++j) m[i * n + j] = m[j * n + i] = g(rng);
      mats.push_back(m);
    }
    std::vector<double> graded, repeated, gram;
    for (i64 k = 0; k < n; ++k) {
      graded.push_back(std::pow(10.0, -0.5 * double(k)));  // decaying, like RMM spectra
      repeated.push_back(k < n / 2 ? 2.0 : 0.0);           // rank-deficient, with ties
      gram.push_back(k == 0 ? 0.0 : 1.0 / double(k * k));  // a centred Gram: one zero
    }
    mats.push_back(with_spectrum(graded, 1));
    mats.push_back(with_spectrum(repeated, 2));
    mats.push_back(with_spectrum(gram, 3));
    mats.push_back(std::vector<double>(static_cast<std::size_t>(n * n), 0.0));
    expect_matches_lapack(mats, n, ("n = " + std::to_string(n)).c_str());  // 7: groups of 4 + 3
  }
}

TEST(BatchedJacobi, AMatrixGetsTheSameResultWhateverItsGroupMates) {
  const i64 n = 8;
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  std::vector<float> mats(static_cast<std::size_t>(9 * n * n));
  for (i64 b = 0; b < 9; ++b)
    for (i64 i = 0; i < n; ++i)
      for (i64 j = 0; j <= i; ++j) mats[(b * n + i) * n + j] = mats[(b * n + j) * n + i] = g(rng);
  auto all = mats;
  std::vector<float> w_all(9 * n), w_one(n);
  ASSERT_EQ(batched_jacobi_eigen(all.data(), w_all.data(), n, 0, 9), -1);
  for (i64 b = 0; b < 9; ++b) {
    std::vector<float> one(mats.begin() + b * n * n, mats.begin() + (b + 1) * n * n);
    ASSERT_EQ(batched_jacobi_eigen(one.data(), w_one.data(), n, 0, 1), -1);
    for (i64 i = 0; i < n * n; ++i) ASSERT_EQ(one[i], all[b * n * n + i]) << b;
    for (i64 k = 0; k < n; ++k) ASSERT_EQ(w_one[k], w_all[b * n + k]) << b;
  }
}

TEST(BatchedJacobi, NonFiniteMatricesAreNamed) {
  std::vector<float> a = {1, 0, 0, 1, 2, NAN, NAN, 2}, w(4);
  EXPECT_EQ(batched_jacobi_eigen(a.data(), w.data(), 2, 0, 2), 1);
}

}  // namespace
}  // namespace revmerge
