// The per-position routine's team form — what a GPU's warp or block runs — on host threads,
// against the CPU backend's form (one lane, eigensolves in lockstep): the same bytes for every
// lane count, shape, input dtype and stored dtype, non-finite inputs included. This is how a
// machine without a GPU checks the device's arithmetic.
#include "kernels/rmm_position.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu_backend.hpp"
#include "kernels/thread_team.hpp"
#include "revmerge/dtype.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;
using kernels::ElemType;

struct Case {
  i64 n, r, in, out, p;
  ElemType input, storage;
  int lanes;
};

// One module's inputs as files hold them (task t's A then B, in `input`'s type, task ranks
// r, r − 1, …, at least 1) and every output the routine writes, in host memory.
struct Module {
  std::vector<unsigned char> bytes;
  std::vector<std::vector<unsigned char>> out;  // mean, basis, coef per side
  std::vector<double> eig[2];
  std::vector<float> ext[2];
  unsigned long long status[2] = {kernels::kRmmNoKey, kernels::kRmmNoKey};
  kernels::RmmModuleArgs args;

  Module(const Case& c, unsigned seed, bool nonfinite) {
    const int es = kernels::elem_size(c.input), ss = kernels::elem_size(c.storage);
    std::mt19937 rng(seed);
    std::normal_distribution<float> g;
    std::vector<i64> offsets;
    i64 at = 0;
    for (i64 t = 0; t < c.n; ++t) {
      const i64 rank = std::max<i64>(1, c.r - t);
      offsets.push_back(at);
      at += (rank * c.in + c.out * rank) * es;
    }
    bytes.resize(static_cast<std::size_t>(at));
    const float shared = g(rng);
    auto put = [&](unsigned char* base, i64 i, float v) {
      if (c.input == ElemType::f64) {
        const double d = v;
        std::memcpy(base + i * 8, &d, 8);
      } else {
        kernels::store_rounded(base, i, c.input, v);
      }
    };
    for (i64 i = 0; i < at / es; ++i)  // magnitudes three orders apart
      put(bytes.data(), i, 0.5f * shared + g(rng) * (i % 3 == 0 ? 1e-3f : 1.0f));
    if (nonfinite) {  // task 1's A holds an infinity, the last task's A a NaN further on
      put(bytes.data() + offsets[1], 2 % c.in, INFINITY);
      put(bytes.data() + offsets[c.n - 1], c.in, NAN);
    }
    args.n = c.n, args.r = c.r, args.in = c.in, args.out = c.out, args.p = c.p;
    args.storage = c.storage;
    args.drop_tol = 1e-13f;
    for (i64 t = 0; t < c.n; ++t) {
      const i64 rank = std::max<i64>(1, c.r - t);
      auto* base = bytes.data() + offsets[t];
      args.tasks[t] = {base, base + rank * c.in * es, c.input, static_cast<std::int32_t>(rank),
                       0.5f + 0.25f * static_cast<float>(t)};
    }
    for (int side = 0; side < 2; ++side) {
      const i64 m = side == 0 ? c.in : c.out;
      for (const i64 count : {m * c.r, m * c.r * c.p, m * c.p * c.n})
        out.emplace_back(static_cast<std::size_t>(count * ss), 0xab);
      eig[side].assign(static_cast<std::size_t>(m * c.n), -1.0);
      ext[side].assign(static_cast<std::size_t>(c.n * m * 2 * c.r), -1.0f);
      args.mean[side] = out[3 * side].data();
      args.basis[side] = out[3 * side + 1].data();
      args.coef[side] = out[3 * side + 2].data();
      args.eigenvalues[side] = eig[side].data();
      args.ext[side] = ext[side].data();
    }
    args.status = status;
  }
};

void expect_same_bytes(const Module& x, const Module& y, const std::string& what) {
  for (std::size_t i = 0; i < x.out.size(); ++i)
    EXPECT_EQ(0, std::memcmp(x.out[i].data(), y.out[i].data(), x.out[i].size()))
        << what << ": tensor " << i << " (side " << i / 3 << ", part " << i % 3 << ")";
  for (int side = 0; side < 2; ++side) {
    EXPECT_EQ(0, std::memcmp(x.eig[side].data(), y.eig[side].data(), 8 * x.eig[side].size()))
        << what << ": eigenvalues of side " << side;
    EXPECT_EQ(0, std::memcmp(x.ext[side].data(), y.ext[side].data(), 4 * x.ext[side].size()))
        << what << ": x and D of side " << side;
  }
  EXPECT_EQ(x.status[0], y.status[0]) << what;
  EXPECT_EQ(x.status[1], y.status[1]) << what;
}

class RmmPositionTeams : public ::testing::TestWithParam<Case> {};

TEST_P(RmmPositionTeams, AnyTeamGivesTheCpuBackendsBytes) {
  const Case c = GetParam();
  for (const bool nonfinite : {false, true}) {
    SCOPED_TRACE(nonfinite ? "non-finite inputs" : "finite inputs");
    Module cpu(c, 7, nonfinite), team(c, 7, nonfinite);
    CpuBackend(2).rmm_positions(cpu.args, {});
    std::vector<double> scratch(
        static_cast<std::size_t>(kernels::rmm_scratch_bytes(c.n, c.r, c.p, false) / 8));
    test::ThreadTeam::run(c.lanes, [&](const test::ThreadTeam& t) {
      for (int side = 0; side < 2; ++side)
        for (i64 j = 0; j < (side == 0 ? c.in : c.out); ++j) {
          kernels::rmm_position(t, team.args, side, j, scratch.data());
          t.sync();  // the next position reuses the scratch
        }
    });
    expect_same_bytes(cpu, team, std::to_string(c.lanes) + " lanes");
    if (nonfinite) {
      EXPECT_EQ(cpu.status[0], kernels::rmm_input_key(1, 0, 2 % c.in)) << "the first one met";
    } else {
      EXPECT_EQ(cpu.status[0], kernels::kRmmNoKey);
    }
    EXPECT_EQ(cpu.status[1], kernels::kRmmNoKey);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RmmPositionTeams,
    ::testing::Values(Case{8, 16, 20, 13, 4, ElemType::bf16, ElemType::bf16, 32},
                      Case{8, 16, 20, 13, 4, ElemType::bf16, ElemType::bf16, 5},
                      Case{8, 64, 9, 12, 4, ElemType::bf16, ElemType::bf16, 8},
                      Case{11, 24, 7, 10, 5, ElemType::f32, ElemType::bf16, 16},
                      Case{2, 1, 7, 3, 1, ElemType::f32, ElemType::f32, 3},
                      Case{5, 9, 11, 6, 3, ElemType::f16, ElemType::f16, 4},
                      Case{7, 12, 9, 10, 6, ElemType::f64, ElemType::bf16, 32},
                      Case{13, 8, 6, 5, 9, ElemType::bf16, ElemType::f32, 32},
                      Case{33, 4, 5, 4, 20, ElemType::f32, ElemType::f16, 64}),
    [](const auto& info) {
      const Case& c = info.param;
      return "n" + std::to_string(c.n) + "_r" + std::to_string(c.r) + "_p" + std::to_string(c.p) +
             "_in" + std::to_string(static_cast<int>(c.input)) + "_st" +
             std::to_string(static_cast<int>(c.storage)) + "_lanes" + std::to_string(c.lanes);
    });

}  // namespace
}  // namespace revmerge
