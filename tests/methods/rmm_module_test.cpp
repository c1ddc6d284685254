// RMM on one module against the plain double-precision reference, on every backend.
#include "methods/rmm_module.hpp"

#include <gtest/gtest.h>

#include <tuple>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "backend/backend_cases.hpp"
#include "backend/cpu_backend.hpp"
#include "backend/deferred_backend.hpp"
#include "methods/rmm_fixtures.hpp"
#include "reference/rmm_reference.hpp"
#include "revmerge/dtype.hpp"
#include "revmerge/error.hpp"
#include <sstream>

namespace revmerge {
namespace {

using i64 = std::int64_t;

struct Case {
  i64 n, r, in, out, p;
  unsigned seed;
};

std::ostream& operator<<(std::ostream& os, const Case& c) {
  return os << "n" << c.n << "_r" << c.r << "_in" << c.in << "_out" << c.out << "_p" << c.p
            << "_seed" << c.seed;
}

// Position j's r × n stack for side A (column j of every A_i) or B (row j of every B_i).
std::vector<double> stack(const test::AdapterStack& s, bool side_a, i64 j) {
  std::vector<double> x(static_cast<std::size_t>(s.r * s.n));
  for (i64 k = 0; k < s.r; ++k)
    for (i64 i = 0; i < s.n; ++i)
      x[k * s.n + i] = side_a ? s.a[(i * s.r + k) * s.in + j] : s.b[(i * s.out + j) * s.r + k];
  return x;
}

// x̂ for position j of a side, rebuilt in double from what rmm_module returned.
std::vector<double> rebuild(const RmmSide& side, i64 j, i64 r, i64 n, i64 p) {
  std::vector<double> x(static_cast<std::size_t>(r * n));
  for (i64 k = 0; k < r; ++k)
    for (i64 i = 0; i < n; ++i) {
      double v = side.mean[j * r + k];
      for (i64 q = 0; q < p; ++q)
        v += double(side.basis[(j * r + k) * p + q]) * side.coef[(j * p + q) * n + i];
      x[k * n + i] = v;
    }
  return x;
}

class RmmModule : public ::testing::TestWithParam<std::tuple<Case, std::string>> {};

TEST_P(RmmModule, MatchesTheDoublePrecisionReference) {
  const auto c = std::get<0>(GetParam());
  REVMERGE_BACKEND_OR_SKIP(be, std::get<1>(GetParam()));
  const auto s = test::make_stack(c.n, c.r, c.in, c.out, c.seed);
  const auto res = rmm_module(*be, {c.n, c.r, c.in, c.out, c.p}, s.a.data(), s.b.data(), DType::F32, {});

  for (const bool side_a : {true, false}) {
    SCOPED_TRACE(side_a ? "side A" : "side B");
    const RmmSide& side = side_a ? res.a : res.b;
    const i64 m = side_a ? c.in : c.out;
    double tail = 0, total = 0, max_recon_diff = 0, scale = 0;
    std::vector<double> spectrum(c.n, 0.0);
    for (i64 j = 0; j < m; ++j) {
      const auto x = stack(s, side_a, j);
      const auto ref = reference::rmm_position(x, int(c.r), int(c.n), int(c.p));
      for (i64 k = 0; k < c.n; ++k) {
        spectrum[k] += std::max(ref.values[k], 0.0);
        total += std::max(ref.values[k], 0.0);
        if (k >= c.p) tail += std::max(ref.values[k], 0.0);
      }
      // The kept subspace is unique only with a gap after the p-th eigenvalue.
      const bool gap = ref.values[c.p - 1] - ref.values[c.p] > 1e-2 * ref.values[0];
      const auto got = rebuild(side, j, c.r, c.n, c.p);
      for (std::size_t e = 0; e < got.size(); ++e) {
        scale = std::max(scale, std::fabs(x[e]));
        if (gap) max_recon_diff = std::max(max_recon_diff, std::fabs(got[e] - ref.recon[e]));
      }
      // Orthonormal basis: VᵀV = I over the kept (non-zero) columns.
      for (i64 q1 = 0; q1 < c.p; ++q1)
        for (i64 q2 = 0; q2 < c.p; ++q2) {
          double d = 0, n1 = 0, n2 = 0;
          for (i64 k = 0; k < c.r; ++k) {
            const double v1 = side.basis[(j * c.r + k) * c.p + q1], v2 = side.basis[(j * c.r + k) * c.p + q2];
            d += v1 * v2, n1 += v1 * v1, n2 += v2 * v2;
          }
          if (n1 == 0 || n2 == 0) continue;
          ASSERT_NEAR(d, q1 == q2 ? 1.0 : 0.0, 2e-5) << "position " << j << " columns " << q1 << "," << q2;
        }
    }
    // The error is exactly the discarded eigenvalues: Σ_i ‖X̂_i − X_i‖² = Σ_{k>p} λ_k.
    double err = 0;
    for (double e : side.factor_sq_error) err += e;
    EXPECT_NEAR(err, tail, 2e-5 * total + 1e-9) << "measured vs Σ_{k>p} λ_k";
    for (i64 k = 0; k < c.n; ++k) EXPECT_NEAR(side.spectrum[k], spectrum[k], 1e-5 * total + 1e-9) << k;
    EXPECT_LE(max_recon_diff, 1e-4 * scale);
  }

  // Delta errors against dense out × in products in double, from the returned factors.
  for (i64 i = 0; i < c.n; ++i) {
    double num = 0, den = 0;
    std::vector<double> ah(c.r * c.in), bh(c.out * c.r);
    for (i64 j = 0; j < c.in; ++j) {
      const auto x = rebuild(res.a, j, c.r, c.n, c.p);
      for (i64 k = 0; k < c.r; ++k) ah[k * c.in + j] = x[k * c.n + i];
    }
    for (i64 j = 0; j < c.out; ++j) {
      const auto x = rebuild(res.b, j, c.r, c.n, c.p);
      for (i64 k = 0; k < c.r; ++k) bh[j * c.r + k] = x[k * c.n + i];
    }
    for (i64 o = 0; o < c.out; ++o)
      for (i64 j = 0; j < c.in; ++j) {
        double hat = 0, orig = 0;
        for (i64 k = 0; k < c.r; ++k) {
          hat += bh[o * c.r + k] * ah[k * c.in + j];
          orig += double(s.b[(i * c.out + o) * c.r + k]) * s.a[(i * c.r + k) * c.in + j];
        }
        num += (hat - orig) * (hat - orig);
        den += orig * orig;
      }
    const double ref = std::sqrt(num / den);
    EXPECT_NEAR(res.delta_error[i], ref, 1e-3 * ref + 2e-6) << "task " << i;
    EXPECT_NEAR(res.delta_norm[i], std::sqrt(den), 1e-5 * std::sqrt(den));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RmmModule,
    ::testing::Combine(
        ::testing::Values(Case{2, 1, 5, 7, 1, 1}, Case{5, 4, 13, 7, 2, 2}, Case{8, 16, 64, 48, 3, 3},
                          Case{8, 8, 33, 17, 7, 4}, Case{32, 8, 20, 12, 10, 5},
                          Case{40, 16, 24, 10, 20, 6}, Case{3, 256, 16, 8, 1, 7},
                          Case{13, 5, 1, 1, 6, 8}),
        ::testing::ValuesIn(test::all_backend_names())),
    [](const auto& info) {
      std::ostringstream os;
      os << std::get<0>(info.param) << "_" << std::get<1>(info.param);
      return os.str();
    });

class RmmModuleOn : public ::testing::TestWithParam<std::string> {};

TEST_P(RmmModuleOn, BasisOfNMinusOneReconstructsEveryTask) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  for (const i64 n : {2, 3, 8, 32, 40}) {
    for (const i64 r : {1, 7, 64}) {
      const auto s = test::make_stack(n, r, 24, 16, unsigned(100 + n + r));
      const auto res = rmm_module(*be, {n, r, 24, 16, n - 1}, s.a.data(), s.b.data(), DType::F32, {});
      for (i64 i = 0; i < n; ++i) {
        EXPECT_LE(res.a.factor_error[i], 1e-6) << "n " << n << " r " << r << " task " << i;
        EXPECT_LE(res.b.factor_error[i], 1e-6) << "n " << n << " r " << r << " task " << i;
        EXPECT_LE(res.delta_error[i], 1e-6) << "n " << n << " r " << r << " task " << i;
      }
    }
  }
}

TEST_P(RmmModuleOn, IdenticalTasksAndZeroAdaptersGiveNoNaN) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  const i64 n = 4, r = 3, in = 6, out = 5;
  auto s = test::make_stack(n, r, in, out, 9);
  for (i64 i = 1; i < n; ++i) {  // every task a copy of task 0
    std::copy_n(s.a.begin(), r * in, s.a.begin() + i * r * in);
    std::copy_n(s.b.begin(), out * r, s.b.begin() + i * out * r);
  }
  auto res = rmm_module(*be, {n, r, in, out, 2}, s.a.data(), s.b.data(), DType::F32, {});
  for (i64 i = 0; i < n; ++i) EXPECT_EQ(res.delta_error[i], 0.0);
  for (float v : res.a.basis) EXPECT_EQ(v, 0.0f);  // no direction to keep
  std::fill(s.a.begin(), s.a.end(), 0.0f);
  std::fill(s.b.begin(), s.b.end(), 0.0f);
  res = rmm_module(*be, {n, r, in, out, 2}, s.a.data(), s.b.data(), DType::F32, {});
  for (i64 i = 0; i < n; ++i) {
    EXPECT_EQ(res.delta_error[i], 0.0);
    EXPECT_EQ(res.a.factor_error[i], 0.0);
  }
  for (float v : res.b.coef) EXPECT_FALSE(std::isnan(v));
}

TEST(RmmModuleEdge, ResultsAreBitwiseIdenticalForOneAndTwoThreads) {
  const auto s = test::make_stack(8, 16, 96, 40, 11);
  CpuBackend one(1), two(2);
  const auto r1 = rmm_module(one, {8, 16, 96, 40, 3}, s.a.data(), s.b.data(), DType::F32, {});
  const auto r2 = rmm_module(two, {8, 16, 96, 40, 3}, s.a.data(), s.b.data(), DType::F32, {});
  EXPECT_EQ(r1.a.basis, r2.a.basis);
  EXPECT_EQ(r1.b.coef, r2.b.coef);
  EXPECT_EQ(r1.a.mean, r2.a.mean);
  EXPECT_EQ(r1.delta_error, r2.delta_error);
}

// The budgeted store measures its RMM candidates from one run at the largest basis size without
// the error terms: the stored tensors are the full run's bits, and RMM at a smaller p is the
// first p directions of it (the store's candidates and the module it writes agree). Pass 2
// measures the spectra alone: the full run's, bit for bit, on the CPU and the deferred backend.
TEST(RmmModuleEdge, WithoutErrorTermsTheStoredTensorsAreTheSameAndSmallerPIsAPrefix) {
  const i64 n = 6, r = 8, in = 40, out = 24, big = 5, small = 2;
  const auto s = test::make_stack(n, r, in, out, 17);
  CpuBackend be(2);
  const auto deferred = test::make_deferred_backend(2);
  for (const DType storage : {DType::F32, DType::BF16}) {
    const auto full = rmm_module(be, {n, r, in, out, big}, s.a.data(), s.b.data(), storage, {});
    const auto bare = rmm_module(be, {n, r, in, out, big}, s.a.data(), s.b.data(), storage, {}, RmmTerms::none);
    const auto part = rmm_module(be, {n, r, in, out, small}, s.a.data(), s.b.data(), storage, {});
    for (Backend* b : {static_cast<Backend*>(&be), deferred.get()}) {
      const auto spectra =
          rmm_module(*b, {n, r, in, out, big}, s.a.data(), s.b.data(), storage, {}, RmmTerms::spectrum);
      for (const auto& [x, y] : {std::pair{&full.a, &spectra.a}, std::pair{&full.b, &spectra.b}}) {
        EXPECT_EQ(x->basis, y->basis);
        EXPECT_EQ(x->coef, y->coef);
        ASSERT_FALSE(y->spectrum.empty());
        EXPECT_EQ(x->spectrum, y->spectrum);
        EXPECT_GT(y->spectrum.front(), 0.0);
        for (const double e : y->factor_error) EXPECT_EQ(e, 0.0);  // not measured
      }
      for (const double e : spectra.delta_error) EXPECT_EQ(e, 0.0);
    }
    for (const auto& [x, y, z] : {std::tuple{&full.a, &bare.a, &part.a}, std::tuple{&full.b, &bare.b, &part.b}}) {
      EXPECT_EQ(x->mean, y->mean);
      EXPECT_EQ(x->basis, y->basis);
      EXPECT_EQ(x->coef, y->coef);
      for (const double e : y->factor_error) EXPECT_EQ(e, 0.0);  // not measured
      EXPECT_EQ(x->mean, z->mean);
      const i64 m = x == &full.a ? in : out;
      for (i64 j = 0; j < m; ++j)
        for (i64 q = 0; q < small; ++q) {
          for (i64 k = 0; k < r; ++k)
            ASSERT_EQ(x->basis[(j * r + k) * big + q], z->basis[(j * r + k) * small + q]) << j << ' ' << q;
          for (i64 t = 0; t < n; ++t)
            ASSERT_EQ(x->coef[(j * big + q) * n + t], z->coef[(j * small + q) * n + t]) << j << ' ' << q;
        }
    }
    for (const double e : bare.delta_error) EXPECT_EQ(e, 0.0);
  }
}

// A module's stored shape and dtype, for the cases that compare two runs' bytes.
struct StoredShape {
  i64 n, r, in, out, p;
  DType storage;
};

// Both runs stored the same bits: every side's mean, basis and coefficients, and its spectrum.
void expect_same_stored(const RmmModuleResult& x, const RmmModuleResult& y) {
  auto same = [](const std::vector<float>& u, const std::vector<float>& v) {
    return u.size() == v.size() && std::memcmp(u.data(), v.data(), 4 * u.size()) == 0;
  };
  for (const auto& [u, v] : {std::pair{&x.a, &y.a}, std::pair{&x.b, &y.b}}) {
    EXPECT_TRUE(same(u->mean, v->mean));
    EXPECT_TRUE(same(u->basis, v->basis));
    EXPECT_TRUE(same(u->coef, v->coef));
    EXPECT_EQ(u->spectrum, v->spectrum);
  }
}

// The deferred backend runs the CPU's routine behind a device's queues, with split-K error
// Grams as a GPU asks for them: the stored tensors and spectra are the same bits, the error
// terms the same to rounding. Odd sizes, n > 32, bf16 and f16 storage, a non-finite position.
TEST(RmmModuleEdge, TheDeviceScheduleStoresTheCpusBits) {
  for (const auto& c : {StoredShape{8, 16, 200, 130, 4, DType::F32}, StoredShape{5, 8, 64, 1, 2, DType::BF16},
                        StoredShape{36, 4, 70, 65, 30, DType::F16}, StoredShape{3, 5, 33, 17, 1, DType::BF16}}) {
    SCOPED_TRACE("n " + std::to_string(c.n));
    auto s = test::make_stack(c.n, c.r, c.in, c.out, 21);
    s.a[3 * c.in + 150 % c.in] = NAN;  // task 0, row 3: one position of A holds a NaN
    CpuBackend cpu(2);
    auto deferred = test::make_deferred_backend();
    const RmmShape shape{c.n, c.r, c.in, c.out, c.p};
    const auto x = rmm_module(cpu, shape, s.a.data(), s.b.data(), c.storage, {});
    const auto y = rmm_module(*deferred, shape, s.a.data(), s.b.data(), c.storage, {});
    expect_same_stored(x, y);
    for (i64 t = 0; t < c.n; ++t) {
      // The NaN went through, not around: every task's A error and delta error say so.
      EXPECT_TRUE(std::isnan(x.a.factor_error[t]) && std::isnan(y.a.factor_error[t])) << t;
      EXPECT_TRUE(std::isnan(x.delta_error[t]) && std::isnan(y.delta_error[t])) << t;
      EXPECT_NEAR(x.b.factor_error[t], y.b.factor_error[t], 1e-6 * x.b.factor_error[t] + 1e-12) << t;
    }
  }
}

// The GPU's teams of 8, 16 and 32 lanes a position (REVMERGE_RMM_TEAM_LANES, set here for the
// call as gpu-check's rmm-team-lanes sets it) store the CPU backend's bits: n fixed at compile
// time (8) and read at run time, a rank that is not a multiple of the team, teams that end
// part-way through a warp, a non-finite position. A value it does not take is refused.
TEST_P(RmmModuleOn, EveryTeamWidthStoresTheCpusBits) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  if (GetParam() != "cuda") GTEST_SKIP() << "only the GPU runs a position on a team of lanes";
  struct Unset {
    ~Unset() { unsetenv("REVMERGE_RMM_TEAM_LANES"); }
  } unset;
  for (const auto& c : {StoredShape{8, 64, 77, 45, 4, DType::BF16}, StoredShape{5, 9, 33, 21, 2, DType::F32},
                        StoredShape{13, 16, 40, 3, 6, DType::F16}, StoredShape{32, 8, 19, 18, 20, DType::BF16}}) {
    auto s = test::make_stack(c.n, c.r, c.in, c.out, 23);
    s.b[(1 * c.out + 2) * c.r + 1] = INFINITY;  // task 1's B, row 2: one position of B
    CpuBackend cpu(2);
    const RmmShape shape{c.n, c.r, c.in, c.out, c.p};
    const auto want = rmm_module(cpu, shape, s.a.data(), s.b.data(), c.storage, {});
    for (const char* lanes : {"8", "16", "32"}) {
      setenv("REVMERGE_RMM_TEAM_LANES", lanes, 1);
      SCOPED_TRACE("n " + std::to_string(c.n) + ", " + lanes + " lanes");
      const auto got = rmm_module(*be, shape, s.a.data(), s.b.data(), c.storage, {});
      expect_same_stored(want, got);
      EXPECT_TRUE(std::isnan(got.delta_error[1]));
    }
  }
  setenv("REVMERGE_RMM_TEAM_LANES", "4", 1);
  const auto s = test::make_stack(3, 2, 4, 4, 13);
  EXPECT_THROW(rmm_module(*be, {3, 2, 4, 4, 1}, s.a.data(), s.b.data(), DType::F32, {}), std::invalid_argument);
}

TEST_P(RmmModuleOn, Bf16StorageIsMeasuredAsStored) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  const auto s = test::make_stack(4, 8, 32, 16, 12);
  const auto res = rmm_module(*be, {4, 8, 32, 16, 3}, s.a.data(), s.b.data(), DType::BF16, {});
  for (float v : res.a.basis) EXPECT_EQ(bf16_to_f32(f32_to_bf16(v)), v);
  for (float v : res.b.mean) EXPECT_EQ(bf16_to_f32(f32_to_bf16(v)), v);
  // p = n − 1 would be exact in f32; bf16 storage leaves its own rounding error, ~2^-9.
  EXPECT_GT(res.a.factor_error[0], 1e-5);
  EXPECT_LT(res.a.factor_error[0], 1e-2);
}

TEST(RmmModuleEdge, RejectsBasisSizesOutsideOneToNMinusOne) {
  const auto s = test::make_stack(3, 2, 4, 4, 13);
  CpuBackend be(1);
  EXPECT_THROW(rmm_module(be, {3, 2, 4, 4, 3}, s.a.data(), s.b.data(), DType::F32, {}), usage_error);
  EXPECT_THROW(rmm_module(be, {3, 2, 4, 4, 0}, s.a.data(), s.b.data(), DType::F32, {}), usage_error);
}

// A llama-7b MLP module (11008 × 4096, 8 tasks of rank 64): the CPU's and a device's schedules
// store the same bits at this scale too, the errors the stored factors have are exactly the
// discarded eigenvalues, and no position fails to converge.
TEST(RmmModuleSlow, ALlamaSizedModuleOnTheCpuAndADevice) {
  const i64 n = 8, r = 64, in = 4096, out = 11008, p = 4;
  const auto s = test::make_stack(n, r, in, out, 31);
  CpuBackend cpu(2);
  auto deferred = test::make_deferred_backend();
  for (const DType storage : {DType::BF16, DType::F32}) {
    SCOPED_TRACE(std::string(dtype_name(storage)));
    const auto x = rmm_module(cpu, {n, r, in, out, p}, s.a.data(), s.b.data(), storage, {});
    const auto y = rmm_module(*deferred, {n, r, in, out, p}, s.a.data(), s.b.data(), storage, {});
    EXPECT_EQ(x.a.basis, y.a.basis);
    EXPECT_EQ(x.b.coef, y.b.coef);
    EXPECT_EQ(x.b.mean, y.b.mean);
    for (const auto* side : {&x.a, &x.b}) {
      double err = 0, tail = 0, total = 0;
      for (const double e : side->factor_sq_error) err += e;
      for (i64 k = 0; k < n; ++k) (k >= p ? tail : total) += side->spectrum[k];
      total += tail;
      if (storage == DType::F32) EXPECT_NEAR(err, tail, 1e-5 * total);
      else EXPECT_GE(err, tail * (1 - 1e-5));  // rounding adds its own error
    }
    for (i64 t = 0; t < n; ++t) EXPECT_NEAR(x.delta_error[t], y.delta_error[t], 1e-6 * x.delta_error[t]);
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, RmmModuleOn, ::testing::ValuesIn(test::all_backend_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace revmerge
