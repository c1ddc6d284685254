// Every backend primitive on every backend against plain double-precision loops (the
// per-position routines have their own tests: tests/kernels/).
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

// A Gram XᵀX of each matrix of a batch (the same buffer as both operands, as RMM's error Grams
// are asked for; the CPU computes one triangle and mirrors it): the loops' values, exactly
// symmetric, C's old contents (NaN) never read at beta = 0. A leading dimension wider than the
// rows and a stride past them too.
TEST_P(BackendOps, GramOfOneOperandIsSymmetricAndMatchesLoops) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  const i64 batch = 5, k = 37, n = 24, ld = 29, stride = k * ld + 3;
  const auto x = random_vector(static_cast<std::size_t>(batch * stride), 21);
  auto dx = test::to_device(*be, x);
  auto dc = test::to_device(*be, std::vector<float>(static_cast<std::size_t>(batch * n * n), std::nanf("")));
  const MatBatch xs{dx.f32(), batch, k, n, ld, stride};
  be->gemm(Op::transpose, Op::none, 2.0f, xs, xs, 0.0f, MatBatch::packed(dc.f32(), batch, n, n), {});
  const auto got = test::to_host(*be, dc, static_cast<std::size_t>(batch * n * n));
  for (i64 q = 0; q < batch; ++q)
    for (i64 i = 0; i < n; ++i)
      for (i64 j = 0; j < n; ++j) {
        double s = 0, mag = 0;
        for (i64 l = 0; l < k; ++l) {
          const double v = double(x[q * stride + l * ld + i]) * x[q * stride + l * ld + j];
          s += v, mag += std::fabs(v);
        }
        const float g = got[(q * n + i) * n + j];
        ASSERT_NEAR(g, 2 * s, 1e-6 * (mag + 1)) << q << " " << i << " " << j;
        ASSERT_EQ(g, got[(q * n + j) * n + i]) << q << " " << i << " " << j;
      }
}

TEST_P(BackendOps, CopyAndFillTouchExactlyTheirBytes) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  const auto x = random_vector(37, 5);
  auto src = test::to_device(*be, x), dst = test::to_device(*be, std::vector<float>(41, 7.0f));
  be->copy(dst.f32() + 2, src.f32() + 1, 35 * sizeof(float), {});
  be->fill(dst.f32() + 38, 0xff, sizeof(float), {});
  const auto got = test::to_host(*be, dst, 41);
  EXPECT_EQ(got[0], 7.0f);
  EXPECT_EQ(got[1], 7.0f);
  for (int i = 0; i < 35; ++i) ASSERT_EQ(got[2 + i], x[1 + i]) << i;
  EXPECT_EQ(got[37], 7.0f);
  EXPECT_TRUE(std::isnan(got[38]));  // all bits set
  EXPECT_EQ(got[39], 7.0f);
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendOps, ::testing::ValuesIn(test::all_backend_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace revmerge

