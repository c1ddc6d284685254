// The budgeted store's RMM candidates on a backend (methods/store/rmm_sides.hpp: rmm_candidates):
// every basis size's difference Grams against the f64 ones the host measures from the same run,
// the same bits on the CPU and the deferred backend (what a discrete device runs), the CPU's
// blocked rows those of the device routine kernels::RmmCandidateRows, and a module's whole
// measurement the same bytes on both.
#include <gtest/gtest.h>

#include <cblas.h>

#include <cmath>
#include <cstring>

#include "backend/backend_cases.hpp"
#include "methods/rmm_fixtures.hpp"
#include "methods/rmm_module.hpp"
#include "methods/store/module_grams.hpp"
#include "methods/store/rmm_sides.hpp"
#include "methods/store/truncation.hpp"
#include "methods/store/store_modules.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

struct Case {
  const char* name;
  i64 n, r, in, out;
  std::vector<i64> ps;  // ascending, 0 first
  DType storage;
  unsigned seed;
};

// Sizes past one CPU block (256 positions), a task of lower rank (zeros past it) and scales
// folded into B, f32 and bf16 storage.
const std::vector<Case> kCases = {
    {"n5_r4_p2_f32", 5, 4, 13, 7, {0, 1, 2}, DType::F32, 1},
    {"n8_r16_p5_bf16", 8, 16, 300, 40, {0, 1, 2, 3, 4, 5}, DType::BF16, 2},
    {"n6_r8_p3_f32_gaps", 6, 8, 520, 33, {0, 2, 3}, DType::F32, 3},
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

struct Module {
  PlannedModule pm;
  std::vector<TaskFactors> f;
};

Module module_of(const Case& c) {
  const auto s = test::make_stack(c.n, c.r, c.in, c.out, c.seed);
  Module m{{"model.layers.0.self_attn.q_proj", 0, "q_proj", c.in, c.out, c.r, {}, {}}, {}};
  for (i64 t = 0; t < c.n; ++t) {
    const i64 rank = t == 1 && c.r > 1 ? c.r - 1 : c.r;
    TaskFactors tf{{}, {}, rank, t % 2 ? 0.5 : 1.0};
    tf.a.assign(s.a.begin() + t * c.r * c.in, s.a.begin() + (t * c.r + rank) * c.in);
    for (i64 o = 0; o < c.out; ++o)
      for (i64 k = 0; k < rank; ++k) tf.b.push_back(s.b[(t * c.out + o) * c.r + k]);
    m.pm.task_ranks.push_back(rank);
    m.f.push_back(std::move(tf));
  }
  return m;
}

class RmmCandidates : public ::testing::TestWithParam<std::tuple<Case, std::string>> {};

// Against the host's f64 differences of the same stored run: each Gram to f32's accuracy, and
// every pair's delta error (what the allocation weighs) to 1e-4 of itself.
TEST_P(RmmCandidates, GramsAreTheHostsDoublePrecisionOnes) {
  const auto& [c, backend] = GetParam();
  REVMERGE_BACKEND_OR_SKIP(be, backend);
  const auto m = module_of(c);
  const auto got = rmm_candidates(*be, m.pm, m.f, c.ps, c.storage);

  auto cpu = make_cpu_backend({1, 0});
  std::vector<float> a, b;
  rmm_stacks(m.pm, m.f, a, b);
  const auto run =
      rmm_module(*cpu, {c.n, c.r, c.in, c.out, c.ps.back()}, a.data(), b.data(), c.storage, {},
                 RmmTerms::none);
  const auto x = side_grams(m.pm, m.f, 1);
  std::vector<SideDifference> want[2];
  for (int side = 0; side < 2; ++side)
    want[side] = side_differences(m.pm, x, side, side == 0 ? run.a : run.b, c.ps.back(), c.ps, 1);

  for (int side = 0; side < 2; ++side) {
    ASSERT_EQ(got[side].size(), c.ps.size());
    for (std::size_t i = 0; i < c.ps.size(); ++i) {
      EXPECT_EQ(got[side][i].p, c.ps[i]);
      for (i64 t = 0; t < c.n; ++t) {
        // D's scale times X's or D's: an f32 sum of products of that size.
        const double d2 = want[side][i].d_sq[t], x2 = x.x_sq[side][t];
        const double tol = 2e-5 * (d2 + std::sqrt(d2 * x2)) + 1e-9 * x2;
        EXPECT_NEAR(got[side][i].d_sq[t], d2, tol)
            << "side " << side << " p " << c.ps[i] << " task " << t;
        for (i64 e = 0; e < c.r * c.r; ++e) {
          ASSERT_NEAR(got[side][i].dd[t][e], want[side][i].dd[t][e], tol)
              << "DᵀD, side " << side << " p " << c.ps[i];
          ASSERT_NEAR(got[side][i].dx[t][e], want[side][i].dx[t][e], tol)
              << "DᵀX, side " << side << " p " << c.ps[i];
        }
      }
    }
  }
  for (std::size_t i = 0; i < c.ps.size(); ++i)
    for (std::size_t j = 0; j < c.ps.size(); ++j) {
      const auto e_got = delta_error_sq(x, got[0][i], got[1][j], c.r);
      const auto e_want = delta_error_sq(x, want[0][i], want[1][j], c.r);
      const auto norm = delta_norm_sq(x);
      for (i64 t = 0; t < c.n; ++t)
        EXPECT_NEAR(e_got[t], e_want[t], 1e-4 * e_want[t] + 1e-9 * norm[t])
            << "p_A " << c.ps[i] << " p_B " << c.ps[j] << " task " << t;
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmmCandidates,
                         ::testing::Combine(::testing::ValuesIn(kCases),
                                            ::testing::ValuesIn(test::all_backend_names())),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param).name) + "_" +
                                  std::get<1>(info.param);
                         });

bool same_bits(const std::vector<double>& x, const std::vector<double>& y) {
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(double)) == 0;
}

TEST(RmmCandidatesOn, TheDeferredBackendGivesTheCpusBits) {
  for (const auto& c : kCases) {
    const auto m = module_of(c);
    auto cpu = make_cpu_backend({2, 0});
    auto deferred = test::make_deferred_backend(2);
    const auto x = rmm_candidates(*cpu, m.pm, m.f, c.ps, c.storage);
    const auto y = rmm_candidates(*deferred, m.pm, m.f, c.ps, c.storage);
    for (int side = 0; side < 2; ++side)
      for (std::size_t i = 0; i < c.ps.size(); ++i)
        for (i64 t = 0; t < c.n; ++t) {
          EXPECT_TRUE(same_bits(x[side][i].dd[t], y[side][i].dd[t]))
              << c.name << " side " << side << " p " << c.ps[i];
          EXPECT_TRUE(same_bits(x[side][i].dx[t], y[side][i].dx[t]))
              << c.name << " side " << side << " p " << c.ps[i];
        }
  }
}

// Within one CPU block each candidate's Gram is one GEMM over the CPU's rows: made instead by the
// device routine, the same GEMM gives the same bits only if the rows are the same.
TEST(RmmCandidatesOn, TheCpusRowsAreTheDeviceRoutines) {
  for (const DType storage : {DType::F32, DType::BF16}) {
    const Case c{"one_block", 6, 8, 200, 24, {0, 1, 3, 4}, storage, 9};
    const auto m = module_of(c);
    auto be = make_cpu_backend({2, 0});
    std::vector<float> a, b;
    rmm_stacks(m.pm, m.f, a, b);
    const RmmShape shape{c.n, c.r, c.in, c.out, c.ps.back()};
    const auto inputs = rmm_upload(*be, shape, a.data(), b.data(), {});
    const auto layout = RmmPacked::layout(shape, c.storage);
    std::vector<unsigned char> packed(layout.bytes);
    const auto work =
        rmm_module_enqueue(*be, shape, inputs.tasks, c.storage, packed.data(), {}, RmmTerms::none);
    for (int side = 0; side < 2; ++side) {
      auto args = rmm_candidate_args(shape, side, c.storage, layout, packed.data(), work, c.ps);
      const i64 per = 2 * c.r * c.r;
      std::vector<double> grams(static_cast<std::size_t>(args.count * c.n * per));
      args.grams = grams.data();
      be->rmm_candidate_grams(args, {});

      std::vector<float> rows(static_cast<std::size_t>(c.n * args.m * 2 * c.r)),
          piece(static_cast<std::size_t>(per));
      for (i64 i = 0; i < args.count; ++i) {
        const kernels::RmmCandidateRows make{args, i, rows.data()};
        for (i64 idx = 0; idx < c.n * args.m * c.r; ++idx) make(idx);
        for (i64 t = 0; t < c.n; ++t) {
          const float* d = rows.data() + t * args.m * 2 * c.r;
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(c.r), int(2 * c.r), int(args.m),
                      1.0f, d, int(2 * c.r), d, int(2 * c.r), 0.0f, piece.data(), int(2 * c.r));
          for (i64 e = 0; e < per; ++e)
            ASSERT_EQ(grams[(i * c.n + t) * per + e], double(piece[e]))
                << dtype_name(storage) << " side " << side << " p " << c.ps[i] << " task " << t
                << " element " << e;
        }
      }
    }
  }
}

// A module's whole measurement (spectra, every option's numbers and errors) is the same bytes on
// the CPU and on the deferred backend, so the allocation decides alike.
TEST(RmmCandidatesOn, AModulesMeasurementIsTheSameBytesOnTheDeferredBackend) {
  const auto m = module_of(kCases[1]);
  auto cpu = make_cpu_backend({2, 0});
  auto deferred = test::make_deferred_backend(2);
  const std::vector<i64> candidates{1, 2, 4};
  const auto x = measure(cpu.get(), m.pm, m.f, candidates, DType::BF16, 2, true, true);
  // The shared bases on a stream of their own, as the store queues them.
  const auto y = measure(deferred.get(), m.pm, m.f, candidates, DType::BF16, 2, true, true, nullptr,
                         deferred->create_stream());
  std::size_t rmm = 0;
  for (const auto& o : x.options) rmm += o.kind == Representation::rmm;
  EXPECT_GT(rmm, 8u);
  EXPECT_EQ(measured_bytes({x}), measured_bytes({y}));
}

// The module's stacked Grams (made on the backend for the shared bases) hold every task's own:
// their diagonal blocks are RMM's side Grams and the truncations' Grams (a task of lower rank,
// scales folded into B's), and the same bits on the CPU and the deferred backend.
TEST(RmmCandidatesOn, TheStackedGramsHoldEveryTasksOwn) {
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.name);
    const auto m = module_of(c);
    auto cpu = make_cpu_backend({1, 0});
    auto deferred = test::make_deferred_backend(2);
    const auto g = module_grams(*cpu, {}, m.f, c.out, c.in);
    const auto gd = module_grams(*deferred, deferred->create_stream(), m.f, c.out, c.in);
    EXPECT_EQ(g.a, gd.a);
    EXPECT_EQ(g.b, gd.b);
    const auto blocks = side_grams(m.pm, m.f, g), host = side_grams(m.pm, m.f, 1);
    for (std::size_t t = 0; t < m.f.size(); ++t)
      for (int side = 0; side < 2; ++side) {
        ASSERT_EQ(blocks.xx[side][t].size(), host.xx[side][t].size());
        for (std::size_t e = 0; e < host.xx[side][t].size(); ++e)
          ASSERT_NEAR(blocks.xx[side][t][e], host.xx[side][t][e], 1e-12 * host.x_sq[side][t])
              << "task " << t << " side " << side << " element " << e;
        EXPECT_NEAR(blocks.x_sq[side][t], host.x_sq[side][t], 1e-12 * host.x_sq[side][t]);
      }
    for (std::size_t t = 0; t < m.f.size(); ++t) {
      const auto& tf = m.f[t];
      const auto own = task_truncation(tf, c.out, c.in);
      const auto from_blocks = task_truncation(tf, c.out, c.in, g.block(g.a, t, tf.rank),
                                               g.block(g.b, t, tf.rank, tf.scale * tf.scale));
      ASSERT_EQ(own.sigma_sq.size(), from_blocks.sigma_sq.size());
      for (std::size_t k = 0; k < own.sigma_sq.size(); ++k)
        EXPECT_NEAR(from_blocks.sigma_sq[k], own.sigma_sq[k], 1e-12 * own.norm_sq) << "task " << t;
    }
  }
}

// A run queued and never taken (the host failed meanwhile) waits for its work before its memory
// goes: on the deferred backend the work would otherwise run later over freed memory (the
// sanitizer suite sees that); the next run on the same backend is unaffected.
TEST(RmmCandidatesOn, ARunNeverTakenWaitsForItsWork) {
  const auto& c = kCases[1];
  const auto m = module_of(c);
  auto deferred = test::make_deferred_backend(2);
  const auto want = rmm_candidates(*deferred, m.pm, m.f, c.ps, c.storage);
  { RmmCandidateRun dropped(*deferred, m.pm, m.f, c.ps, c.storage); }
  RmmCandidateRun run(*deferred, m.pm, m.f, c.ps, c.storage);
  const auto got = run.take();
  for (int side = 0; side < 2; ++side)
    for (std::size_t i = 0; i < c.ps.size(); ++i)
      for (i64 t = 0; t < c.n; ++t) EXPECT_TRUE(same_bits(got[side][i].dd[t], want[side][i].dd[t]));
}

// Basis sizes out of order, below 0 or past RMM's limits are refused before anything runs.
TEST(RmmCandidatesOn, BadBasisSizesAreRefused) {
  const auto m = module_of(kCases[0]);
  auto cpu = make_cpu_backend({1, 0});
  EXPECT_THROW(rmm_candidates(*cpu, m.pm, m.f, {0, 2, 1}, DType::F32), usage_error);
  EXPECT_THROW(rmm_candidates(*cpu, m.pm, m.f, {-1, 1}, DType::F32), usage_error);
  EXPECT_THROW(rmm_candidates(*cpu, m.pm, m.f, {0, 5}, DType::F32), usage_error);  // p = n
  EXPECT_THROW(rmm_candidates(*cpu, m.pm, m.f, {}, DType::F32), usage_error);
}

}  // namespace
}  // namespace revmerge
