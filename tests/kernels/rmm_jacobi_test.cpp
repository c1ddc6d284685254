// The routine's eigensolver: the team form (one matrix, any lane count) and the CPU's lockstep
// form (eight matrices, one per vector lane) give the same bits, matrix by matrix, whichever
// matrices share a group and however many sweeps each needs; and the results are eigen-
// decompositions as LAPACK's dsyevd finds them.
#include <gtest/gtest.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "backend/cpu_jacobi_lanes.hpp"
#include "kernels/rmm_jacobi.hpp"
#include "kernels/thread_team.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Symmetric N × N test matrices of several kinds: Grams of random data (PSD, a spread
// spectrum), Grams of centred data (a zero eigenvalue), repeated eigenvalues, already
// diagonal, zero, and a nearly diagonal one (converges in a sweep or two).
std::vector<double> matrix(i64 N, int kind, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g;
  std::vector<double> a(static_cast<std::size_t>(N * N), 0.0);
  if (kind == 4) return a;
  if (kind == 3) {
    for (i64 i = 0; i < N; ++i) a[i * N + i] = g(rng);
    return a;
  }
  if (kind == 5) {
    for (i64 i = 0; i < N; ++i)
      for (i64 j = 0; j <= i; ++j) a[i * N + j] = a[j * N + i] = i == j ? 1.0 + i : 1e-9 * g(rng);
    return a;
  }
  const i64 rows = N + 3;
  std::vector<double> x(static_cast<std::size_t>(rows * N));
  for (auto& v : x) v = g(rng);
  if (kind == 1)
    for (i64 k = 0; k < rows; ++k) {  // centre each row over the columns
      double m = 0;
      for (i64 i = 0; i < N; ++i) m += x[k * N + i];
      for (i64 i = 0; i < N; ++i) x[k * N + i] -= m / N;
    }
  if (kind == 2)
    for (i64 k = 0; k < rows; ++k)  // two equal halves: repeated eigenvalues
      for (i64 i = N / 2; i < N; ++i) x[k * N + i] = x[k * N + i - N / 2];
  for (i64 i = 0; i < N; ++i)
    for (i64 j = 0; j < N; ++j) {
      double s = 0;
      for (i64 k = 0; k < rows; ++k) s += x[k * N + i] * x[k * N + j];
      a[i * N + j] = s;
    }
  return a;
}

std::vector<double> identity(i64 N) {
  std::vector<double> v(static_cast<std::size_t>(N * N), 0.0);
  for (i64 i = 0; i < N; ++i) v[i * N + i] = 1.0;
  return v;
}

struct Solved {
  std::vector<double> a, vt;
  bool converged;
};

Solved serial(std::vector<double> a, i64 N) {
  auto vt = identity(N);
  std::vector<double> rot(3 * N / 2), scal(2);
  std::vector<int> pairs(N);
  const bool ok = kernels::rmm_jacobi(kernels::SerialTeam{}, a.data(), vt.data(), N, rot.data(),
                                      pairs.data(), scal.data());
  return {a, vt, ok};
}

class RmmJacobi : public ::testing::TestWithParam<i64> {};

TEST_P(RmmJacobi, LockstepLanesAndTeamsGiveOneMatrixsBits) {
  const i64 N = GetParam();
  constexpr int L = cpu::kJacobiLanes;
  // Lanes of different kinds side by side (they converge after different sweeps), one lane
  // left out.
  std::vector<std::vector<double>> inputs;
  for (int l = 0; l < L; ++l) inputs.push_back(matrix(N, l % 6, 100u + static_cast<unsigned>(l)));
  // 64-byte aligned, as the CPU backend's work memory is.
  const std::size_t count = static_cast<std::size_t>(N * N * L);
  std::unique_ptr<double, decltype(&std::free)> a(
      static_cast<double*>(std::aligned_alloc(64, (count * 8 + 63) / 64 * 64)), &std::free),
      vt(static_cast<double*>(std::aligned_alloc(64, (count * 8 + 63) / 64 * 64)), &std::free);
  double* pa = a.get();
  double* pv = vt.get();
  bool active[L], converged[L];
  const auto id = identity(N);
  for (int l = 0; l < L; ++l) {
    active[l] = l != 6;
    for (i64 i = 0; i < N * N; ++i) pa[i * L + l] = inputs[l][i], pv[i * L + l] = id[i];
  }
  cpu::jacobi_lanes(pa, pv, N, active, converged);
  for (int l = 0; l < L; ++l) {
    SCOPED_TRACE(::testing::Message() << "lane " << l << ", kind " << l % 6);
    if (!active[l]) {
      EXPECT_FALSE(converged[l]);
      for (i64 i = 0; i < N * N; ++i) ASSERT_EQ(pa[i * L + l], inputs[l][i]) << "left alone";
      continue;
    }
    const auto want = serial(inputs[l], N);
    EXPECT_EQ(converged[l], want.converged);
    for (i64 i = 0; i < N * N; ++i) {
      ASSERT_EQ(0, std::memcmp(&pa[i * L + l], &want.a[i], 8)) << "A element " << i;
      ASSERT_EQ(0, std::memcmp(&pv[i * L + l], &want.vt[i], 8)) << "V element " << i;
    }
  }
  // A team of host threads, as a GPU's warp runs it.
  for (const int lanes : {3, 32}) {
    auto ta = inputs[1];
    auto tv = id;
    std::vector<double> rot(3 * N / 2), scal(2);
    std::vector<int> pairs(N);
    bool ok = false;
    test::ThreadTeam::run(lanes, [&](const test::ThreadTeam& t) {
      const bool r = kernels::rmm_jacobi(t, ta.data(), tv.data(), N, rot.data(), pairs.data(), scal.data());
      if (t.lane() == 0) ok = r;
    });
    const auto want = serial(inputs[1], N);
    EXPECT_EQ(ok, want.converged);
    EXPECT_EQ(0, std::memcmp(ta.data(), want.a.data(), 8 * ta.size())) << lanes << " lanes";
    EXPECT_EQ(0, std::memcmp(tv.data(), want.vt.data(), 8 * tv.size())) << lanes << " lanes";
  }
}

TEST_P(RmmJacobi, FindsWhatLapackFinds) {
  const i64 N = GetParam();
  for (int kind = 0; kind < 6; ++kind) {
    SCOPED_TRACE(::testing::Message() << "kind " << kind);
    const auto in = matrix(N, kind, 7u + static_cast<unsigned>(kind));
    const auto got = serial(in, N);
    ASSERT_TRUE(got.converged);
    std::vector<double> lapack = in, w(static_cast<std::size_t>(N));
    ASSERT_EQ(0, LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'N', 'U', static_cast<lapack_int>(N),
                                lapack.data(), static_cast<lapack_int>(N), w.data()));
    std::vector<double> mine(static_cast<std::size_t>(N));
    double scale = 1e-300;
    for (i64 i = 0; i < N; ++i) mine[i] = got.a[i * N + i], scale = std::max(scale, std::fabs(w[i]));
    std::sort(mine.begin(), mine.end());
    for (i64 i = 0; i < N; ++i) EXPECT_NEAR(mine[i], w[i], 1e-13 * scale) << i;
    // Orthonormal eigenvectors that rebuild the matrix.
    for (i64 i = 0; i < N; ++i)
      for (i64 j = 0; j < N; ++j) {
        double dot = 0, rebuilt = 0;
        for (i64 k = 0; k < N; ++k) {
          dot += got.vt[i * N + k] * got.vt[j * N + k];
          rebuilt += got.vt[k * N + i] * got.a[k * N + k] * got.vt[k * N + j];
        }
        ASSERT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-13);
        ASSERT_NEAR(rebuilt, in[i * N + j], 1e-12 * scale);
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Orders, RmmJacobi, ::testing::Values(2, 4, 6, 8, 10, 16, 64),
                         [](const auto& info) { return "N" + std::to_string(info.param); });

}  // namespace
}  // namespace revmerge
