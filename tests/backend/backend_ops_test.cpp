// Every backend primitive on every backend against plain double-precision loops.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/backend_cases.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

std::vector<float> random_vector(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

class BackendOps : public ::testing::TestWithParam<std::string> {};

struct GemmCase {
  Op op_a, op_b;
  i64 batch, m, n, k;
};

TEST_P(BackendOps, GemmMatchesLoopsForEveryTransposeAndOddSizes) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  const GemmCase cases[] = {{Op::none, Op::none, 1, 1, 1, 1},     {Op::none, Op::transpose, 3, 5, 7, 13},
                            {Op::transpose, Op::none, 7, 13, 5, 7}, {Op::transpose, Op::transpose, 2, 8, 16, 32},
                            {Op::none, Op::none, 13, 64, 5, 1},     {Op::transpose, Op::none, 5, 40, 40, 64},
                            // RMM's per-position products (the CPU's small-product path) ...
                            {Op::transpose, Op::none, 37, 8, 8, 64},  {Op::none, Op::none, 9, 64, 4, 8},
                            {Op::none, Op::none, 9, 64, 8, 4},        {Op::none, Op::transpose, 3, 5, 16, 64},
                            // ... and products past it (library GEMM): large, and wider than 64.
                            {Op::none, Op::transpose, 2, 64, 64, 300}, {Op::transpose, Op::transpose, 1, 3, 70, 5}};
  unsigned seed = 1;
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << "batch " << c.batch << " m " << c.m << " n " << c.n << " k "
                                      << c.k << " seed " << seed);
    const i64 ar = c.op_a == Op::none ? c.m : c.k, ac = c.op_a == Op::none ? c.k : c.m;
    const i64 br = c.op_b == Op::none ? c.k : c.n, bc = c.op_b == Op::none ? c.n : c.k;
    const auto a = random_vector(c.batch * ar * ac, seed++), b = random_vector(c.batch * br * bc, seed++);
    const auto c0 = random_vector(c.batch * c.m * c.n, seed++);
    auto da = test::to_device(*be, a), db = test::to_device(*be, b), dc = test::to_device(*be, c0);
    be->gemm(c.op_a, c.op_b, 0.5f, MatBatch::packed(da.f32(), c.batch, ar, ac),
             MatBatch::packed(db.f32(), c.batch, br, bc), -1.0f,
             MatBatch::packed(dc.f32(), c.batch, c.m, c.n), {});
    const auto got = test::to_host(*be, dc, c0.size());
    for (i64 q = 0; q < c.batch; ++q)
      for (i64 i = 0; i < c.m; ++i)
        for (i64 j = 0; j < c.n; ++j) {
          double s = 0, mag = 0;
          for (i64 l = 0; l < c.k; ++l) {
            const double x = c.op_a == Op::none ? a[(q * ar + i) * ac + l] : a[(q * ar + l) * ac + i];
            const double y = c.op_b == Op::none ? b[(q * br + l) * bc + j] : b[(q * br + j) * bc + l];
            s += x * y, mag += std::fabs(x * y);
          }
          const double want = 0.5 * s - c0[(q * c.m + i) * c.n + j];
          ASSERT_NEAR(got[(q * c.m + i) * c.n + j], want, 1e-6 * (mag + 1)) << q << " " << i << " " << j;
        }
  }
}

TEST_P(BackendOps, GemmHonoursLeadingDimensionsAndBroadcast) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  // A: one 3 × 2 matrix broadcast over a batch of 4; B: 2 × 1 columns picked with ld 5.
  const auto a = random_vector(6, 7), b = random_vector(4 * 2 * 5, 8);
  auto da = test::to_device(*be, a), db = test::to_device(*be, b), dc = test::to_device(*be, std::vector<float>(12, 0));
  be->gemm(Op::none, Op::none, 1.0f, {da.f32(), 1, 3, 2, 2, 0}, {db.f32() + 3, 4, 2, 1, 5, 10}, 0.0f,
           MatBatch::packed(dc.f32(), 4, 3, 1), {});
  const auto got = test::to_host(*be, dc, 12);
  for (i64 q = 0; q < 4; ++q)
    for (i64 i = 0; i < 3; ++i) {
      const double want = double(a[i * 2]) * b[q * 10 + 3] + double(a[i * 2 + 1]) * b[q * 10 + 5 + 3];
      EXPECT_NEAR(got[q * 3 + i], want, 1e-6);
    }
  // beta = 0 never reads C (BLAS's rule): NaN there does not reach the result.
  auto poisoned = test::to_device(*be, std::vector<float>(12, std::nanf("")));
  be->gemm(Op::none, Op::none, 1.0f, {da.f32(), 1, 3, 2, 2, 0}, {db.f32() + 3, 4, 2, 1, 5, 10}, 0.0f,
           MatBatch::packed(poisoned.f32(), 4, 3, 1), {});
  EXPECT_EQ(test::to_host(*be, poisoned, 12), got);
  // Reported by the call, or at the latest by the stream's synchronize.
  EXPECT_THROW(
      {
        be->gemm(Op::none, Op::none, 1.0f, MatBatch::packed(da.f32(), 1, 3, 2),
                 MatBatch::packed(db.f32(), 1, 3, 1), 0.0f, MatBatch::packed(dc.f32(), 1, 3, 1),
                 {});
        be->synchronize({});
      },
      shape_error);
}

TEST_P(BackendOps, SymmetricEigenReconstructsWithOrthonormalVectors) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  for (const i64 n : {1, 2, 5, 7, 13, 32, 33, 40}) {
    SCOPED_TRACE(::testing::Message() << "n " << n);
    const i64 batch = 9;
    const auto x = random_vector(batch * n * (n + 3), unsigned(n));
    std::vector<float> g(batch * n * n, 0.0f);  // Gram matrices: symmetric, PSD
    for (i64 q = 0; q < batch; ++q)
      for (i64 i = 0; i < n; ++i)
        for (i64 j = 0; j < n; ++j) {
          double s = 0;
          for (i64 l = 0; l < n + 3; ++l) s += double(x[(q * (n + 3) + l) * n + i]) * x[(q * (n + 3) + l) * n + j];
          g[(q * n + i) * n + j] = float(s);
        }
    auto dg = test::to_device(*be, g), dw = be->allocate(batch * n * sizeof(float));
    be->symmetric_eigen(MatBatch::packed(dg.f32(), batch, n, n), dw.f32(), {});
    const auto vecs = test::to_host(*be, dg, g.size()), vals = test::to_host(*be, dw, batch * n);
    for (i64 q = 0; q < batch; ++q) {
      double scale = 0;
      for (i64 k = 0; k < n; ++k) scale = std::max(scale, std::fabs(double(vals[q * n + k])));
      for (i64 k = 1; k < n; ++k) EXPECT_LE(vals[q * n + k - 1], vals[q * n + k]);  // ascending
      for (i64 i = 0; i < n; ++i)
        for (i64 j = 0; j < n; ++j) {
          double rec = 0, dot = 0;
          for (i64 k = 0; k < n; ++k) {
            rec += double(vecs[(q * n + k) * n + i]) * vals[q * n + k] * vecs[(q * n + k) * n + j];
            dot += double(vecs[(q * n + i) * n + k]) * vecs[(q * n + j) * n + k];
          }
          ASSERT_NEAR(rec, g[(q * n + i) * n + j], 2e-5 * scale) << q << " " << i << " " << j;
          ASSERT_NEAR(dot, i == j ? 1.0 : 0.0, 2e-5);
        }
    }
  }
}

TEST_P(BackendOps, PermutesOfEveryRmmLayoutMatchLoops) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  // The four permutes rmm_module runs (task-major A / B to position-major and back), on sizes
  // that are not multiples of the CPU's 32 × 32 tiles.
  const i64 n = 5, r = 7, m = 71;
  struct Case {
    i64 s0, s1, s2, d0, d1, d2;
  };
  for (const auto& c : {Case{1, m, r * m, m, r, n}, Case{r, 1, m * r, m, r, n},
                        Case{1, n, r * n, n, r, m}, Case{1, r * n, n, n, m, r}}) {
    const auto x = random_vector(n * r * m, 23);
    auto dx = test::to_device(*be, x), dy = be->allocate(x.size() * 4);
    be->permute3(dx.f32(), c.s0, c.s1, c.s2, dy.f32(), c.d0, c.d1, c.d2, {});
    const auto y = test::to_host(*be, dy, x.size());
    for (i64 i0 = 0; i0 < c.d0; ++i0)
      for (i64 i1 = 0; i1 < c.d1; ++i1)
        for (i64 i2 = 0; i2 < c.d2; ++i2)
          ASSERT_EQ(y[(i0 * c.d1 + i1) * c.d2 + i2], x[i0 * c.s0 + i1 * c.s1 + i2 * c.s2])
              << c.s0 << " " << c.s1 << " " << c.s2;
  }
}

TEST_P(BackendOps, ElementwiseKernelsMatchLoops) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  const i64 d0 = 5, d1 = 7, d2 = 3;
  const auto x = random_vector(d0 * d1 * d2, 21);
  auto dx = test::to_device(*be, x), dy = be->allocate(x.size() * 4);
  // dst[i0, i1, i2] = src[i2, i0, i1] with src shaped d2 × d0 × d1.
  be->permute3(dx.f32(), d1, 1, d0 * d1, dy.f32(), d0, d1, d2, {});
  auto y = test::to_host(*be, dy, x.size());
  for (i64 i0 = 0; i0 < d0; ++i0)
    for (i64 i1 = 0; i1 < d1; ++i1)
      for (i64 i2 = 0; i2 < d2; ++i2) EXPECT_EQ(y[(i0 * d1 + i1) * d2 + i2], x[(i2 * d0 + i0) * d1 + i1]);

  auto dm = be->allocate(d0 * d1 * 4);
  be->center_rows(dx.f32(), dm.f32(), d0 * d1, d2, {});
  const auto centred = test::to_host(*be, dx, x.size()), mean = test::to_host(*be, dm, d0 * d1);
  for (i64 r = 0; r < d0 * d1; ++r) {
    const double m = (double(x[r * 3]) + x[r * 3 + 1] + x[r * 3 + 2]) / 3;
    EXPECT_NEAR(mean[r], m, 1e-6);
    for (i64 i = 0; i < 3; ++i) EXPECT_NEAR(centred[r * 3 + i], x[r * 3 + i] - m, 1e-6);
  }
  be->broadcast_rows(dm.f32(), dy.f32(), d0 * d1, d2, {});
  y = test::to_host(*be, dy, x.size());
  for (i64 i = 0; i < i64(x.size()); ++i) EXPECT_EQ(y[i], mean[i / d2]);

  be->subtract(dx.f32(), dy.f32(), dy.f32(), i64(x.size()), {});
  y = test::to_host(*be, dy, x.size());
  for (i64 i = 0; i < i64(x.size()); ++i) EXPECT_EQ(y[i], centred[i] - mean[i / d2]);

  DeviceBuffer dd = be->allocate(d0 * sizeof(double)), dcs = be->allocate(d2 * sizeof(double));
  be->batched_dot(dx.f32(), dx.f32(), static_cast<double*>(dd.data()), d0, d1 * d2, {});
  be->column_sums(dx.f32(), static_cast<double*>(dcs.data()), d0 * d1, d2, {});
  std::vector<double> dots(d0), sums(d2);
  be->download(dots.data(), dd.data(), d0 * sizeof(double), {});
  be->download(sums.data(), dcs.data(), d2 * sizeof(double), {});
  be->synchronize({});
  for (i64 b = 0; b < d0; ++b) {
    double s = 0;
    for (i64 i = 0; i < d1 * d2; ++i) s += double(centred[b * d1 * d2 + i]) * centred[b * d1 * d2 + i];
    EXPECT_NEAR(dots[b], s, 1e-9 * s);
  }
  for (i64 k = 0; k < d2; ++k) {
    double s = 0;
    for (i64 r = 0; r < d0 * d1; ++r) s += centred[r * d2 + k];
    EXPECT_NEAR(sums[k], s, 1e-9);
  }
}

TEST_P(BackendOps, RoundingMatchesTheFileConversions) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  auto x = random_vector(4096, 31);
  for (i64 i = 0; i < 4096; i += 7) x[i] *= std::pow(2.0f, float(i % 60) - 40.0f);  // wide range
  x[1] = 65519.0f, x[2] = 65520.0f, x[3] = 1e-7f, x[4] = -0.0f;
  for (const DType t : {DType::BF16, DType::F16, DType::F32}) {
    auto dx = test::to_device(*be, x);
    be->round_to(dx.f32(), i64(x.size()), t, {});
    const auto got = test::to_host(*be, dx, x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      const float want = t == DType::BF16 ? bf16_to_f32(f32_to_bf16(x[i]))
                       : t == DType::F16  ? f16_to_f32(f32_to_f16(x[i]))
                                          : x[i];
      ASSERT_EQ(got[i], want) << dtype_name(t) << " value " << x[i];
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendOps, ::testing::ValuesIn(test::all_backend_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace revmerge

namespace revmerge {
namespace {

// A failing solve is reported with the call, the matrix and LAPACK's info, never ignored.
TEST(CpuBackend, SolverFailureIsReportedWithItsInfo) {
  auto be = make_cpu_backend({1, 0});
  // A symmetric matrix with a NaN off the diagonal cannot converge: n = 3 goes to the batched
  // Jacobi solver, n = 17 to LAPACK.
  const float nan = std::nanf("");
  for (const std::int64_t n : {3, 17}) {
    std::vector<float> g(static_cast<std::size_t>(n * n), 0.0f);
    for (std::int64_t i = 0; i < n; ++i) g[i * n + i] = 1.0f + float(i);
    g[1] = g[n] = nan;  // the pattern dsyevd reports as not converged
    g[2] = g[2 * n] = 0.5f;
    g[n + 2] = g[2 * n + 1] = 0.25f;
    auto dg = test::to_device(*be, g), dw = be->allocate(static_cast<std::size_t>(n) * sizeof(float));
    try {
      be->symmetric_eigen(MatBatch::packed(dg.f32(), 1, n, n), dw.f32(), {});
      FAIL() << "a NaN matrix was solved, n = " << n;
    } catch (const solver_error& e) {
      const std::string want = n == 3 ? "Jacobi eigensolver did not converge on matrix 0 of 1, n = 3"
                                      : "LAPACKE_dsyevd_work failed (info";
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace revmerge
