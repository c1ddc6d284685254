// The backends' f64 group (the PT-SVD's primitives) on every backend against plain loops:
// column-major batched GEMM with transposes and broadcasts, Cholesky factors and their inverses
// (and the verdict on a matrix that is not positive definite), Householder QR, sums of squares,
// deltas from every float dtype's bytes with the first non-finite element, the Gaussian
// sketch drawn as the host draws it, and the LoRA stacks of truncated SVDs; and the budgeted
// store's row-major group: the f64 Gram of f32 rows, the symmetric eigensolve and the GEMM with
// an op on either side.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "backend/backend_cases.hpp"
#include "kernels/counter_rng.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

std::vector<double> random_doubles(std::size_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  std::vector<double> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

using test::to_device;
using test::to_host;

class BackendF64 : public ::testing::TestWithParam<std::string> {};

TEST_P(BackendF64, GemmTransposesAndBroadcastsLikeLoops) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  struct Case {
    Op op;
    i64 batch, rows, cols, inner, lda_pad;
    bool broadcast_b;
  };
  for (const auto& c :
       {Case{Op::none, 3, 7, 5, 11, 0, false}, Case{Op::transpose, 2, 6, 4, 9, 3, false},
        Case{Op::none, 4, 10, 3, 8, 2, true}, Case{Op::transpose, 1, 1, 1, 1, 0, false}}) {
    SCOPED_TRACE(::testing::Message()
                 << "op " << (c.op == Op::none ? "N" : "T") << " batch " << c.batch);
    const i64 ar = c.op == Op::none ? c.rows : c.inner, ac = c.op == Op::none ? c.inner : c.rows;
    const i64 lda = ar + c.lda_pad, sa = lda * ac, sb = c.broadcast_b ? 0 : c.inner * c.cols;
    const auto a = random_doubles(static_cast<std::size_t>(c.batch * sa), 1);
    const auto b = random_doubles(
        static_cast<std::size_t>((c.broadcast_b ? 1 : c.batch) * c.inner * c.cols), 2);
    const auto da = to_device(*be, a), db = to_device(*be, b);
    auto dc = be->allocate(static_cast<std::size_t>(c.batch * c.rows * c.cols) * sizeof(double));
    be->gemm_f64(c.op, c.rows, c.cols, c.inner, static_cast<const double*>(da.data()), lda, sa,
                 static_cast<const double*>(db.data()), c.inner, sb,
                 static_cast<double*>(dc.data()), c.rows, c.rows * c.cols, c.batch, {});
    const auto got = to_host<double>(*be, dc, static_cast<std::size_t>(c.batch * c.rows * c.cols));
    for (i64 t = 0; t < c.batch; ++t)
      for (i64 j = 0; j < c.cols; ++j)
        for (i64 i = 0; i < c.rows; ++i) {
          double want = 0;
          for (i64 p = 0; p < c.inner; ++p) {
            const double x = c.op == Op::none ? a[t * sa + p * lda + i] : a[t * sa + i * lda + p];
            want += x * b[t * sb + j * c.inner + p];
          }
          ASSERT_NEAR(got[(t * c.cols + j) * c.rows + i], want, 1e-12 * (1 + std::abs(want)));
        }
  }
}

TEST_P(BackendF64, CholeskyFactorsTheirInversesAndAFailure) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  const i64 n = 9, batch = 3;
  // Two Grams XᵀX (positive definite) and one with a negative eigenvalue in its leading 4 × 4.
  std::vector<double> g(static_cast<std::size_t>(batch * n * n));
  for (i64 t = 0; t < 2; ++t) {
    const auto x = random_doubles(static_cast<std::size_t>(20 * n), 10 + unsigned(t));
    for (i64 j = 0; j < n; ++j)
      for (i64 i = 0; i < n; ++i) {
        double s = 0;
        for (i64 r = 0; r < 20; ++r) s += x[i * 20 + r] * x[j * 20 + r];
        g[(t * n + j) * n + i] = s;
      }
  }
  for (i64 i = 0; i < n; ++i) g[(2 * n + i) * n + i] = i == 3 ? -1.0 : 1.0;
  const auto original = g;
  auto dg = to_device(*be, g);
  auto dinv = be->allocate(g.size() * sizeof(double));
  auto dinfo = be->allocate(static_cast<std::size_t>(batch) * sizeof(int));
  be->cholesky_inverse_f64(static_cast<double*>(dg.data()), static_cast<double*>(dinv.data()), n,
                           batch, static_cast<int*>(dinfo.data()), {});
  const auto r = to_host<double>(*be, dg, g.size()), inv = to_host<double>(*be, dinv, g.size());
  const auto info = to_host<int>(*be, dinfo, static_cast<std::size_t>(batch));
  EXPECT_EQ(info[0], 0);
  EXPECT_EQ(info[1], 0);
  EXPECT_EQ(info[2], 4) << "the first leading minor that is not positive definite";
  for (i64 t = 0; t < 2; ++t)
    for (i64 j = 0; j < n; ++j)
      for (i64 i = 0; i < n; ++i) {
        double rtr = 0, rrinv = 0;  // (RᵀR)(i, j) and (R R⁻¹)(i, j), upper triangles only
        for (i64 p = 0; p <= std::min(i, j); ++p)
          rtr += r[(t * n + i) * n + p] * r[(t * n + j) * n + p];
        for (i64 p = i; p <= j; ++p) rrinv += r[(t * n + p) * n + i] * inv[(t * n + j) * n + p];
        ASSERT_NEAR(rtr, original[(t * n + j) * n + i], 1e-10 * original[(t * n + i) * n + i]);
        ASSERT_NEAR(j >= i ? rrinv : 0.0, i == j ? 1.0 : 0.0, 1e-10);
        if (i > j) ASSERT_EQ(inv[(t * n + j) * n + i], 0.0) << "zeros below the diagonal";
      }
}

TEST_P(BackendF64, HouseholderGivesOrthonormalQAndR) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  const i64 rows = 37, cols = 6;
  const auto x = random_doubles(static_cast<std::size_t>(rows * cols), 5);
  auto dx = to_device(*be, x);
  std::vector<double> r(static_cast<std::size_t>(cols * cols), -1.0);
  be->householder_qr_f64(static_cast<double*>(dx.data()), rows, cols, r.data(), {});
  const auto q = to_host<double>(*be, dx, x.size());
  for (i64 a = 0; a < cols; ++a)
    for (i64 b = 0; b < cols; ++b) {
      double d = 0;
      for (i64 i = 0; i < rows; ++i) d += q[a * rows + i] * q[b * rows + i];
      EXPECT_NEAR(d, a == b ? 1.0 : 0.0, 1e-13);
      if (a > b) EXPECT_EQ(r[b * cols + a], 0.0);
    }
  for (i64 j = 0; j < cols; ++j)
    for (i64 i = 0; i < rows; ++i) {
      double qr = 0;
      for (i64 p = 0; p <= j; ++p) qr += q[p * rows + i] * r[j * cols + p];
      EXPECT_NEAR(qr, x[j * rows + i], 1e-12);
    }
}

TEST_P(BackendF64, SumsOfSquaresAndTheSketch) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  const auto x = random_doubles(3 * 1000, 6);
  auto dx = to_device(*be, x);
  auto dsum = be->allocate(3 * sizeof(double));
  be->sum_squares_f64(static_cast<const double*>(dx.data()), 1000, 3,
                      static_cast<double*>(dsum.data()), {});
  const auto sums = to_host<double>(*be, dsum, 3);
  for (i64 b = 0; b < 3; ++b) {
    double want = 0;
    for (i64 i = 0; i < 1000; ++i) want += x[b * 1000 + i] * x[b * 1000 + i];
    EXPECT_NEAR(sums[b], want, 1e-12 * want);
  }
  const i64 count = 70001;  // past one block of the CPU's loop
  auto dg = be->allocate(static_cast<std::size_t>(count) * sizeof(double));
  be->gaussian_f64(static_cast<double*>(dg.data()), count, 42, 7, {});
  const auto drawn = to_host<double>(*be, dg, static_cast<std::size_t>(count));
  for (i64 i = 0; i < count; i += 997)  // the device's log and cos may differ in the last ulp
    ASSERT_NEAR(drawn[i], kernels::counter_normal(42, 7, static_cast<std::uint64_t>(i)), 1e-14)
        << i;
  ASSERT_NEAR(drawn[count - 1], kernels::counter_normal(42, 7, count - 1), 1e-14);
}

TEST_P(BackendF64, DeltasFromEveryFloatTypeAndTheFirstNonFiniteElement) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  const i64 count = 70001;
  std::vector<float> base(static_cast<std::size_t>(count)), ft(base.size());
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  for (std::size_t i = 0; i < base.size(); ++i) base[i] = g(rng), ft[i] = base[i] + 0.01f * g(rng);
  ft[69000] = INFINITY;  // in the CPU's second block
  ft[68000] = NAN;
  for (const auto ft_type : {DType::F32, DType::F16, DType::BF16, DType::F64})
    for (const auto base_type : {DType::BF16, DType::F32}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(ft_type) << " − " << dtype_name(base_type));
      std::vector<std::byte> fb(ft.size() * dtype_size(ft_type)),
          bb(base.size() * dtype_size(base_type));
      if (ft_type == DType::F64) {
        std::vector<double> w(ft.begin(), ft.end());
        std::memcpy(fb.data(), w.data(), fb.size());
      } else {
        convert_from_f32(ft.data(), ft_type, fb.data(), ft.size());
      }
      convert_from_f32(base.data(), base_type, bb.data(), base.size());
      std::vector<double> fd(ft.size()), bd(base.size());
      convert_to_f64(ft_type, fb.data(), fd.data(), fd.size());
      convert_to_f64(base_type, bb.data(), bd.data(), bd.size());
      const auto df = to_device(*be, fb), db = to_device(*be, bb);
      auto dbad = to_device(*be, std::vector<std::uint64_t>{~std::uint64_t{0}});
      auto dd = be->allocate(static_cast<std::size_t>(count) * sizeof(double));
      be->delta_f64(df.data(), ft_type, db.data(), base_type, static_cast<double*>(dd.data()),
                    count, static_cast<std::uint64_t*>(dbad.data()), {});
      const auto got = to_host<double>(*be, dd, static_cast<std::size_t>(count));
      EXPECT_EQ(to_host<std::uint64_t>(*be, dbad, 1)[0], 68000u);
      for (i64 i = 0; i < count; ++i)
        if (std::isfinite(fd[i])) ASSERT_EQ(got[i], fd[i] - bd[i]) << i;
    }
}

// CholeskyQR2's verdict clears a task's flag for a failed factorization in either round, an
// entry of R₂ 0.1 or more from I, or a NaN; it keeps a flag that is set, and never sets one.
TEST_P(BackendF64, CholeskyQrVerdictClearsOnlyWhatFailed) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  const i64 n = 3, batch = 7;
  std::vector<double> r2(static_cast<std::size_t>(batch * n * n), 0.0);
  for (i64 b = 0; b < batch; ++b)
    for (i64 i = 0; i < n; ++i) r2[b * n * n + i * n + i] = 1.0 + 0.01 * double(b);  // near I
  r2[2 * n * n + 2 * n + 0] = 0.1;    // task 2: an off-diagonal entry at the tolerance
  r2[3 * n * n + 1 * n + 1] = 0.899;  // task 3: a diagonal entry too far
  r2[4 * n * n + 2 * n + 1] = std::nan("");
  r2[5 * n * n + 0 * n + 1] = 5.0;  // task 5: below the diagonal (the Gram's leftovers): ignored
  std::vector<int> infos(static_cast<std::size_t>(2 * batch), 0);
  infos[0] = 2;          // task 0: the first round failed
  infos[batch + 1] = 1;  // task 1: the second
  const std::vector<int> held{1, 1, 1, 1, 1, 1, 0};  // task 6 was cleared by an earlier step
  const auto dr = to_device(*be, r2);
  const auto di = to_device(*be, infos);
  auto dh = to_device(*be, held);
  be->cholesky_qr_verdict_f64(static_cast<const double*>(dr.data()), static_cast<const int*>(di.data()), n,
                              batch, 0.1, static_cast<int*>(dh.data()), {});
  EXPECT_EQ(to_host<int>(*be, dh, batch), (std::vector<int>{0, 0, 0, 0, 0, 1, 0}));
}

// The stacks a truncated SVD gives are lora_factors' numbers, to the bit, zero past the rank.
TEST_P(BackendF64, LoraStacksAreTheFactorsCompressWrites) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  const i64 tasks = 3, in = 7, out = 5, k = 2, r = 4;
  const auto u = random_doubles(tasks * in * k, 8), v = random_doubles(tasks * out * k, 9),
             s = random_doubles(tasks * k, 10);
  const auto du = to_device(*be, u), dv = to_device(*be, v), ds = to_device(*be, s);
  auto da = be->allocate(tasks * r * in * sizeof(float)),
       db = be->allocate(tasks * out * r * sizeof(float));
  be->lora_stacks_f64(static_cast<const double*>(du.data()), static_cast<const double*>(dv.data()),
                      static_cast<const double*>(ds.data()), tasks, in, out, k, r, da.f32(),
                      db.f32(), {});
  const auto a = to_host(*be, da, tasks * r * in), b = to_host(*be, db, tasks * out * r);
  for (i64 t = 0; t < tasks; ++t) {
    for (i64 c = 0; c < r; ++c)
      for (i64 x = 0; x < in; ++x)
        ASSERT_EQ(a[(t * r + c) * in + x], c < k ? float(u[(t * k + c) * in + x]) : 0.0f)
            << t << c << x;
    for (i64 y = 0; y < out; ++y)
      for (i64 c = 0; c < r; ++c)
        ASSERT_EQ(b[(t * out + y) * r + c],
                  c < k ? float(v[(t * k + c) * out + y] * s[t * k + c]) : 0.0f)
            << t << y << c;
  }
}

// X Xᵀ of f32 rows in f64: every entry within summation-order rounding of a plain loop's, the
// two triangles bitwise equal (the store mirrors nothing itself).
TEST_P(BackendF64, GramOfFloatRowsInDouble) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  for (const auto [rows, cols] : {std::pair<i64, i64>{37, 300}, {1, 1}, {6, 1000}, {4, 0}}) {
    SCOPED_TRACE(::testing::Message() << rows << " × " << cols);
    const auto wide = random_doubles(static_cast<std::size_t>(rows * cols), 11);
    const std::vector<float> x(wide.begin(), wide.end());
    const auto dx = to_device(*be, x);
    auto dg = be->allocate(static_cast<std::size_t>(rows * rows) * sizeof(double));
    be->gram_f64(dx.f32(), rows, cols, static_cast<double*>(dg.data()), {});
    const auto g = to_host<double>(*be, dg, static_cast<std::size_t>(rows * rows));
    for (i64 i = 0; i < rows; ++i)
      for (i64 j = 0; j < rows; ++j) {
        double want = 0, scale = 0;
        for (i64 c = 0; c < cols; ++c) {
          const double p = double(x[i * cols + c]) * double(x[j * cols + c]);
          want += p, scale += std::abs(p);
        }
        ASSERT_NEAR(g[i * rows + j], want, 4e-16 * double(cols) * scale) << i << ", " << j;
        ASSERT_EQ(g[i * rows + j], g[j * rows + i]) << i << ", " << j;
      }
  }
}

// A symmetric matrix from its upper triangle alone (the lower one holds junk): ascending
// eigenvalues, orthonormal eigenvectors in the columns, A v = λ v.
TEST_P(BackendF64, SymmetricEigenFromTheUpperTriangle) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  for (const i64 n : {i64{40}, i64{1}, i64{0}}) {
    SCOPED_TRACE(::testing::Message() << "n " << n);
    auto a = random_doubles(static_cast<std::size_t>(n * n), 12);
    for (i64 i = 0; i < n; ++i)
      for (i64 j = 0; j < i; ++j) a[i * n + j] = 1e6 + double(i);  // not read
    const auto da = to_device(*be, a);
    auto dw = be->allocate(static_cast<std::size_t>(std::max<i64>(n, 1)) * sizeof(double));
    auto di = to_device(*be, std::vector<int>{-7});
    be->symmetric_eigen_f64(static_cast<double*>(da.data()), n, static_cast<double*>(dw.data()),
                            static_cast<int*>(di.data()), {});
    const auto v = to_host<double>(*be, da, static_cast<std::size_t>(n * n));
    const auto w = to_host<double>(*be, dw, static_cast<std::size_t>(n));
    ASSERT_EQ(to_host<int>(*be, di, 1)[0], 0);
    const auto sym = [&](i64 i, i64 j) { return i <= j ? a[i * n + j] : a[j * n + i]; };
    for (i64 k = 0; k < n; ++k) {
      if (k > 0) EXPECT_LE(w[k - 1], w[k]);
      for (i64 l = 0; l < n; ++l) {
        double dot = 0;
        for (i64 i = 0; i < n; ++i) dot += v[i * n + k] * v[i * n + l];
        ASSERT_NEAR(dot, k == l ? 1.0 : 0.0, 1e-12) << k << ", " << l;
      }
      for (i64 i = 0; i < n; ++i) {
        double av = 0;
        for (i64 j = 0; j < n; ++j) av += sym(i, j) * v[j * n + k];
        ASSERT_NEAR(av, w[k] * v[i * n + k], 1e-11) << "eigenpair " << k << ", row " << i;
      }
    }
  }
}

// Row-major C = alpha op_a(A) op_b(B) for every pair of ops, leading dimensions wider than the
// rows, a zero inner size (C all zeros), against plain loops.
TEST_P(BackendF64, RowMajorGemmWithAnOpOnEitherSide) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  struct Case {
    Op op_a, op_b;
    i64 rows, cols, inner, pad;
  };
  for (const auto& c : {Case{Op::none, Op::none, 7, 5, 11, 0}, Case{Op::transpose, Op::none, 6, 9, 4, 3},
                        Case{Op::none, Op::transpose, 8, 3, 10, 2}, Case{Op::transpose, Op::transpose, 5, 6, 7, 1},
                        Case{Op::none, Op::none, 1, 1, 1, 0}, Case{Op::none, Op::transpose, 3, 4, 0, 1}}) {
    SCOPED_TRACE(::testing::Message() << (c.op_a == Op::none ? "N" : "T") << (c.op_b == Op::none ? "N" : "T")
                                      << " " << c.rows << " × " << c.cols << " × " << c.inner);
    // Stored row-major: A as rows × inner (N) or inner × rows (T), B as inner × cols or cols × inner.
    const i64 a_rows = c.op_a == Op::none ? c.rows : c.inner, a_cols = c.op_a == Op::none ? c.inner : c.rows;
    const i64 b_rows = c.op_b == Op::none ? c.inner : c.cols, b_cols = c.op_b == Op::none ? c.cols : c.inner;
    const i64 lda = a_cols + c.pad, ldb = b_cols + c.pad, ldc = c.cols + c.pad;
    const auto a = random_doubles(static_cast<std::size_t>(std::max<i64>(a_rows * lda, 1)), 21);
    const auto b = random_doubles(static_cast<std::size_t>(std::max<i64>(b_rows * ldb, 1)), 22);
    const std::vector<double> junk(static_cast<std::size_t>(c.rows * ldc), 9.5);
    const auto da = to_device(*be, a), db = to_device(*be, b), dc = to_device(*be, junk);
    const double alpha = -1.75;
    be->gemm_f64_rows(c.op_a, c.op_b, c.rows, c.cols, c.inner, alpha, static_cast<const double*>(da.data()),
                      std::max<i64>(lda, 1), static_cast<const double*>(db.data()), std::max<i64>(ldb, 1),
                      static_cast<double*>(dc.data()), ldc, {});
    const auto got = to_host<double>(*be, dc, junk.size());
    for (i64 i = 0; i < c.rows; ++i)
      for (i64 j = 0; j < c.cols; ++j) {
        double want = 0;
        for (i64 p = 0; p < c.inner; ++p) {
          const double x = c.op_a == Op::none ? a[i * lda + p] : a[p * lda + i];
          const double y = c.op_b == Op::none ? b[p * ldb + j] : b[j * ldb + p];
          want += x * y;
        }
        ASSERT_NEAR(got[i * ldc + j], alpha * want, 1e-12 * (1 + std::abs(want))) << i << ", " << j;
      }
    for (i64 i = 0; i < c.rows; ++i)  // past each row's columns: untouched
      for (i64 j = c.cols; j < ldc; ++j) ASSERT_EQ(got[i * ldc + j], 9.5) << i << ", " << j;
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendF64, ::testing::ValuesIn(test::all_backend_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace revmerge
