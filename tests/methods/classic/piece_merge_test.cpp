// Full-model merges in pieces (piece_merge.hpp): every method that merges in pieces gives the
// same bits for any piece size as for the whole tensor in one piece — and, where a method also
// has a whole-tensor definition (merge_whole_tensor), the same bits as that — and the budget
// check refuses a tensor whose row a method needs whole when it does not fit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "kernels/elementwise.hpp"
#include "methods/classic/piece_merge.hpp"
#include "methods/classic/thinning.hpp"
#include "revmerge/error.hpp"
#include "revmerge/safetensors.hpp"
#include "methods/classic/tensor_set.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;
using test::Case;
using test::TensorSet;

// The same merge by the whole-tensor implementation, where the method has one.
std::vector<float> merge_whole(const TensorSet& set, const ClassicMergeOptions& o, std::size_t n, bool base) {
  TensorInputs in;
  in.name = "w";
  in.shape = set.shape;
  in.n = n;
  in.count = static_cast<std::size_t>(set.numel());
  if (base) {
    in.base.resize(in.count);
    set.file->read(*set.tensors[0].info, in.base);
  }
  in.stacked.resize(n * in.count);
  for (std::size_t t = 0; t < n; ++t) set.file->read(*set.tensors[1 + t].info, in.model(t));
  std::vector<float> out(in.count);
  merge_whole_tensor(o, in, out, 2);
  return out;
}


const Case kCases[] = {
    {"linear", ClassicMethod::linear, 3, false, [](ClassicMergeOptions& o) { o.weights = {0.5, 0.3, 0.2}; }},
    {"task_arithmetic", ClassicMethod::task_arithmetic, 3, true, [](ClassicMergeOptions& o) { o.weights = {1, 0.5, -0.3}; }},
    {"ties", ClassicMethod::ties, 3, true, [](ClassicMergeOptions& o) { o.densities = {0.3, 0.5, 0.2}; }},
    {"ties_rescaled", ClassicMethod::ties, 3, true,
     [](ClassicMergeOptions& o) { o.densities = {0.3, 0.5, 0.2}; o.rescale = true; }},
    {"dare_ties", ClassicMethod::dare_ties, 3, true,
     [](ClassicMergeOptions& o) { o.densities = {0.3, 0.5, 0.2}; o.seed = 7; }},
    {"dare_linear", ClassicMethod::dare_linear, 3, true,
     [](ClassicMergeOptions& o) { o.densities = {0.4}; o.rescale = false; o.seed = 3; }},
    {"breadcrumbs_ties", ClassicMethod::breadcrumbs_ties, 3, true,
     [](ClassicMergeOptions& o) { o.densities = {0.5}; o.gammas = {0.05, 0.1, 0.02}; o.rescale = true; }},
    {"della", ClassicMethod::della, 3, true,
     [](ClassicMergeOptions& o) { o.densities = {0.5}; o.epsilons = {0.1}; o.seed = 2; }},
    {"della_linear", ClassicMethod::della_linear, 2, true,
     [](ClassicMergeOptions& o) { o.densities = {0.4}; o.epsilons = {0.2}; o.seed = 1; }},
    {"slerp", ClassicMethod::slerp, 1, true, [](ClassicMergeOptions& o) { o.t = 0.3; }},
    {"nearswap", ClassicMethod::nearswap, 1, true, [](ClassicMergeOptions& o) { o.t = 0.01; }},
    {"model_stock", ClassicMethod::model_stock, 3, true, [](ClassicMergeOptions&) {}},
    {"model_stock_rows", ClassicMethod::model_stock, 3, true, [](ClassicMergeOptions& o) { o.filter_wise = true; }},
    {"passthrough", ClassicMethod::passthrough, 1, false, [](ClassicMergeOptions& o) { o.scales = {0.5}; }},
    {"nuslerp", ClassicMethod::nuslerp, 2, true, [](ClassicMergeOptions& o) { o.weights = {0.3, 0.7}; }},
    {"nuslerp_rows", ClassicMethod::nuslerp, 2, false,
     [](ClassicMergeOptions& o) { o.weights = {0.6, 0.4}; o.nuslerp_flatten = false; }},
    {"nuslerp_columns", ClassicMethod::nuslerp, 2, true,
     [](ClassicMergeOptions& o) { o.weights = {0.5, 0.2}; o.nuslerp_flatten = false; o.nuslerp_row_wise = true; }},
    {"multislerp_one", ClassicMethod::multislerp, 1, true, [](ClassicMergeOptions&) {}},
    {"multislerp", ClassicMethod::multislerp, 3, true, [](ClassicMergeOptions& o) { o.weights = {1, 2, 3}; }},
    {"multislerp_nobase", ClassicMethod::multislerp, 3, false, [](ClassicMergeOptions&) {}},
    {"sce", ClassicMethod::sce, 3, true, [](ClassicMergeOptions& o) { o.select_topk = 0.3; }},
    {"sce_all", ClassicMethod::sce, 3, true, [](ClassicMergeOptions&) {}},
    {"arcee_fusion", ClassicMethod::arcee_fusion, 1, true, [](ClassicMergeOptions&) {}},
    {"karcher", ClassicMethod::karcher, 3, true, [](ClassicMergeOptions& o) { o.max_iter = 4; o.tol = 1e-9; }},
    {"karcher_nobase", ClassicMethod::karcher, 3, false, [](ClassicMergeOptions&) {}},
    {"ram", ClassicMethod::ram, 3, true, [](ClassicMergeOptions& o) { o.epsilons = {0.01}; }},
    {"ramplus_tl", ClassicMethod::ramplus_tl, 3, true,
     [](ClassicMergeOptions& o) { o.epsilons = {0.01}; o.ram_r = 0.5; o.ram_alpha = 0.9; }},
};

class PieceMerge : public ::testing::TestWithParam<Case> {};

TEST_P(PieceMerge, AnyPieceSizeGivesTheWholeTensorsBits) {
  const auto& c = GetParam();
  // 210 000 elements: 52 of the statistics' blocks (4 096), pieces cutting them anywhere.
  static const TensorSet set({300, 700});
  ClassicMergeOptions o;
  o.method = c.method;
  for (std::size_t t = 0; t < c.n; ++t) o.tasks.push_back({"t" + std::to_string(t), "unused"});
  c.set(o);
  const auto whole = set.merge(o, c.n, c.base, set.numel(), 1);
  for (const i64 piece : {i64{333}, i64{4999}, i64{65536}, i64{100000}}) {
    const auto parts = set.merge(o, c.n, c.base, piece, 2);
    ASSERT_EQ(0, std::memcmp(whole.data(), parts.data(), whole.size() * sizeof(float)))
        << c.name << ": pieces of " << piece << " differ from the whole tensor";
  }
  if (is_spherical(c.method) || is_selective(c.method) || is_elementwise(c.method)) {
    const auto reference = merge_whole(set, o, c.n, c.base);
    ASSERT_EQ(0, std::memcmp(whole.data(), reference.data(), whole.size() * sizeof(float)))
        << c.name << ": the piece merger differs from the whole-tensor implementation";
  }
  // The merge changed something (a broken merger copying an input would pass the comparison).
  std::vector<float> base(whole.size());
  set.file->read(*set.tensors[0].info, base);
  EXPECT_NE(0, std::memcmp(whole.data(), base.data(), whole.size() * sizeof(float))) << c.name;
}

// Past 2^18 elements arcee_fusion's quartiles and SCE's threshold come from a strided sample
// and its brackets (RankSelect::sample_first), not a sample of every value: still the
// whole-tensor definitions' bits, for any piece size.
TEST(PieceMerge, SampledSelectionsGiveTheWholeTensorsBits) {
  static const TensorSet set({600, 700});
  for (const auto method : {ClassicMethod::arcee_fusion, ClassicMethod::sce}) {
    const std::size_t n = method == ClassicMethod::sce ? 3 : 1;
    ClassicMergeOptions o;
    o.method = method;
    for (std::size_t t = 0; t < n; ++t) o.tasks.push_back({"t" + std::to_string(t), "unused"});
    if (method == ClassicMethod::sce) o.select_topk = 0.3;
    const auto reference = merge_whole(set, o, n, true);
    for (const i64 piece : {i64{4999}, i64{100000}, set.numel()}) {
      const auto parts = set.merge(o, n, true, piece, 2);
      ASSERT_EQ(0, std::memcmp(reference.data(), parts.data(), reference.size() * sizeof(float)))
          << (n == 1 ? "arcee_fusion" : "sce") << ": pieces of " << piece << " differ from the whole tensor";
    }
  }
}

// The host's Gram sums take up to four vectors' sums at once (sphere_sums.cpp's
// gram_lanes_block, each vector's values made once) and more through the general loop: both
// give karcher's whole-tensor bits (the kernels' steps, element by element) at every vector
// count either side of the switch, the base among the vectors. (combine_on_backend_test.cpp
// checks model_stock's task vectors the same way, against a backend's steps.)
TEST(PieceMerge, GramSumsOfEveryVectorCountGiveTheWholeTensorsBits) {
  static const TensorSet set({300, 700}, DType::F32, 5);
  for (std::size_t n = 1; n <= 5; ++n) {
    ClassicMergeOptions o;
    o.method = ClassicMethod::karcher;
    for (std::size_t t = 0; t < n; ++t) o.tasks.push_back({"t" + std::to_string(t), "unused"});
    o.max_iter = 4, o.tol = 1e-9;
    const auto reference = merge_whole(set, o, n, true);
    for (const i64 piece : {i64{4999}, i64{65536}, set.numel()}) {
      const auto parts = set.merge(o, n, true, piece, 2);
      ASSERT_EQ(0, std::memcmp(reference.data(), parts.data(), reference.size() * sizeof(float)))
          << "karcher over " << n << " fine-tunes and the base: pieces of " << piece
          << " differ from the whole tensor";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, PieceMerge, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(PieceMerge, ThinningGathersTheRightThresholdAcrossPieces) {
  // TIES at density 0.3 on one task: exactly ⌊0.3 · N⌋ elements survive, whatever the pieces.
  const TensorSet set({300, 700});
  ClassicMergeOptions o;
  o.method = ClassicMethod::ties;
  o.tasks = {{"t0", "unused"}};
  o.densities = {0.3};
  const auto merged = set.merge(o, 1, true, 7777, 2);
  std::vector<float> base(merged.size());
  set.file->read(*set.tensors[0].info, base);
  i64 changed = 0;
  for (std::size_t k = 0; k < merged.size(); ++k) changed += merged[k] != base[k];
  EXPECT_EQ(changed, static_cast<i64>(0.3 * 210000));
}

TEST(PieceMerge, ThinningInRunsIsTheWholeTensorsThinning) {
  // Runs of a piece come to the thinning on several threads (slots) in any order; its decisions
  // are those of the tensor thinned whole. Ties everywhere: every other element is one of few
  // magnitudes, the others spread between them (so a threshold's high bits hold values below and
  // above it too). With 81 levels the elements at a threshold's high bits are few enough to be
  // kept in the low bits' pass, which then counts the ties (two passes); with 5 levels and no
  // spread over 3 M elements they are not (three passes).
  struct Shape {
    std::size_t count;
    int levels;
    float spread;
    int passes;
  };
  for (const auto& [count, levels, width, passes] : {Shape{300007, 40, 0.06f, 2}, Shape{3000000, 2, 0.0f, 3}}) {
    std::mt19937_64 rng(count);
    std::uniform_int_distribution<int> level(-levels, levels);
    std::uniform_real_distribution<float> spread(-width, width);
    std::vector<float> x(count);
    for (std::size_t j = 0; j < count; ++j) x[j] = 0.125f * float(level(rng)) + (j % 2 && width > 0 ? spread(rng) : 0.0f);
    const ThinningSpec specs[] = {{Sparsify::magnitude, 0.37, 0, 0, Rescale::none, true, 0, 0, {}},
                                  {Sparsify::outliers, 0.5, 0.05, 0, Rescale::none, false, 0, 0, {}},
                                  {Sparsify::magnitude, 0.2, 0, 0, Rescale::l1, true, 0, 0, {}},
                                  {Sparsify::random, 0.4, 0, 0, Rescale::l1, false, 5, 6, {}}};
    for (const auto& spec : specs) {
      auto whole = x, runs = x;
      const auto n = static_cast<i64>(count);
      Thinning(spec, n).run(whole, 2);
      Thinning th(spec, n);
      constexpr i64 kRun = PieceMerger::kRunAlign;
      const i64 last = (n - 1) / kRun;
      const auto run = [&](i64 r) { return std::span<float>(runs).subspan(r * kRun, std::min(kRun, n - r * kRun)); };
      int seen = 0;
      while (th.wants_pass()) {
        th.start_runs(3);
        for (i64 r = last; r >= 0; --r) th.observe_run(r * kRun, run(r), static_cast<int>(r % 3));  // backwards
        th.end_pass();
        ++seen;
      }
      for (i64 r = 0; r <= last; ++r) th.apply_run(r * kRun, run(r));
      const auto kind = static_cast<int>(spec.kind);
      ASSERT_EQ(0, std::memcmp(whole.data(), runs.data(), count * sizeof(float))) << count << " elements, kind " << kind;
      // the trims without rescaling count their ties in the low bits' pass where they can
      if (spec.rescale == Rescale::none) EXPECT_EQ(seen, passes) << count << " elements, kind " << kind;
      EXPECT_NE(whole, x);
    }
  }
}

TEST(PieceMerge, SlerpSumsOfRunsAreTheStepsLanes) {
  // The host's runs (eight lanes at a time) and the kernels' dot_lanes step (a lane per index,
  // what a backend runs) leave the same bits in every lane, from runs and pieces starting
  // anywhere.
  constexpr i64 kCount = 50001;
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v0(kCount), v1(kCount);
  for (i64 j = 0; j < kCount; ++j) v0[j] = normal(rng), v1[j] = v0[j] + 0.1f * normal(rng);
  SlerpSums steps(kCount), runs(kCount);
  for (i64 first = 0; first < kCount; first += 333) {
    const i64 m = std::min<i64>(333, kCount - first);
    run_host_step(steps.step(first, m, v0.data() + first, v1.data() + first, steps.lanes().data()), 2);
  }
  for (i64 first = 0; first < kCount;) {  // runs of 1 to 600 elements
    const i64 m = std::min<i64>(1 + (first * 7919) % 600, kCount - first);
    runs.add_run(first, v0.data() + first, v1.data() + first, m);
    first += m;
  }
  ASSERT_EQ(steps.lane_count(), runs.lane_count());
  EXPECT_EQ(0, std::memcmp(steps.lanes().data(), runs.lanes().data(), steps.lane_count() * sizeof(double)));
  EXPECT_NE(0.0, steps.lanes()[5]);
}

// arcee_fusion beyond the size sampled whole (2^18): its runs of whole rows (1 000-element rows,
// 16 runs of 16 000 in a run-aligned piece; a row or a few where pieces are small) go through
// the sample and the brackets pass, and give the bits of the whole-tensor implementation.
TEST(PieceMerge, FusionInRunsThroughItsBracketsGivesTheWholeTensorsBits) {
  static const TensorSet set({640, 1000});
  ClassicMergeOptions o;
  o.method = ClassicMethod::arcee_fusion;
  o.tasks.push_back({"t0", "unused"});
  const auto reference = merge_whole(set, o, 1, true);
  for (const i64 piece : {i64{1000}, i64{5000}, i64{333000}, set.numel()}) {
    const auto parts = set.merge(o, 1, true, piece, 2);
    ASSERT_EQ(0, std::memcmp(reference.data(), parts.data(), reference.size() * sizeof(float)))
        << "pieces of " << piece << " differ from the whole tensor";
  }
}

// The host's rows of arcee_fusion (maxima and lane sums as vectors; exp_f64_normal and
// log_f64_normal where a row spans at most 708) give the bits of the shared routine as a GPU
// runs it (each value formed where it is added): rows of every length around the lanes'
// multiples, maxima anywhere (zeros of both signs among them), ties, and rows spanning more.
TEST(PieceMerge, FusionRowsAreTheSharedRoutinesBits) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 0.03f);
  for (const std::int64_t row : {1, 2, 7, 8, 9, 15, 16, 17, 300, 4099}) {
    const std::int64_t rows = 5;
    std::vector<float> w(static_cast<std::size_t>(row * rows)), b(w.size());
    for (std::size_t k = 0; k < w.size(); ++k) {
      w[k] = normal(rng);
      b[k] = w[k] + normal(rng) * 0.1f;
    }
    // Row 1 at or below zero with zeros of both signs at its top; row 2 all equal; row 3 its
    // largest values last.
    for (std::int64_t j = 0; j < row; ++j) {
      w[static_cast<std::size_t>(row + j)] = j % 3 == 0 ? (j % 2 ? -0.0f : 0.0f) : -std::fabs(w[static_cast<std::size_t>(row + j)]);
      b[static_cast<std::size_t>(row + j)] = j % 2 ? 0.0f : -0.0f;
      w[static_cast<std::size_t>(2 * row + j)] = 0.25f;
      w[static_cast<std::size_t>(3 * row + j)] = static_cast<float>(j) * 1e-3f;
    }
    // Row 4 spans more than 708 (exps that underflow: the general forms) in w, and in b for
    // rows longer than one.
    w[static_cast<std::size_t>(4 * row)] = -800.0f;
    b[static_cast<std::size_t>(4 * row + row - 1)] = row > 1 ? 750.0f : b[static_cast<std::size_t>(4 * row)];
    const auto kl = fusion_rows(w, b, row, 2);
    ASSERT_EQ(kl.size(), static_cast<std::size_t>(rows));
    for (std::int64_t r = 0; r < rows; ++r) {
      const double expected = kernels::fusion_row_kl(w.data() + r * row, b.data() + r * row, row);
      EXPECT_EQ(std::memcmp(&kl[static_cast<std::size_t>(r)], &expected, sizeof expected), 0)
          << "row length " << row << ", row " << r << ": " << kl[static_cast<std::size_t>(r)] << " against " << expected;
    }
  }
}

TEST(PieceMerge, NonFiniteInputsAreRefusedByTaskAndElement) {
  // bf16 inputs: task 1 holds +Inf at 70 000 and NaN at 70 005, task 2 NaN at 30 000. A piece
  // names the first of its inputs in order that holds one, at its first such element; the whole
  // tensor is one piece, pieces of 65 536 meet task 2's first.
  const TensorSet set({300, 700}, DType::BF16, 3, [](std::vector<std::vector<float>>& v) {
    v[2][70000] = std::numeric_limits<float>::infinity();
    v[2][70005] = std::numeric_limits<float>::quiet_NaN();
    v[3][30000] = std::numeric_limits<float>::quiet_NaN();
  });
  for (const auto method : {ClassicMethod::task_arithmetic, ClassicMethod::ties, ClassicMethod::slerp}) {
    ClassicMergeOptions o;
    o.method = method;
    const std::size_t n = method == ClassicMethod::slerp ? 1 : 3;
    for (std::size_t t = 0; t < n; ++t) o.tasks.push_back({"t" + std::to_string(t), "unused"});
    o.densities = {0.5};
    o.t = 0.5;
    for (const i64 piece : {set.numel(), i64{65536}}) {
      // slerp reads the base and t0 alone, which are finite.
      const std::string expected = n == 1           ? ""
                                   : piece == 65536 ? "tensor 't2' holds a non-finite value at element 30000 (task 2)"
                                                    : "tensor 't1' holds a non-finite value at element 70000 (task 1)";
      try {
        set.merge(o, n, true, piece, 2);
        if (!expected.empty()) ADD_FAILURE() << to_string(method) << ": non-finite inputs merged";
      } catch (const format_error& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find(expected), std::string::npos)
            << to_string(method) << ", pieces of " << piece << ": " << m;
        EXPECT_FALSE(expected.empty()) << m;
      }
    }
  }
}

TEST(PieceMerge, BudgetRefusesATensorWhoseRowDoesNotFit) {
  // DELLA ranks within rows: a row of 50M elements for 3 tasks and a base does not fit 512 MiB.
  ClassicMergeOptions o;
  o.method = ClassicMethod::della;
  o.tasks = {{"a", "x"}, {"b", "y"}, {"c", "z"}};
  o.densities = {0.5};
  const std::vector<i64> shape{4, 50'000'000};
  const auto plan = plan_pieces(3, true, std::uint64_t{512} << 20, true);
  const auto della = piece_merger(o, "w", shape, 3, true);
  try {
    check_fits(plan, *della, "della", "w", 200'000'000, 2);
    FAIL() << "a 50M-element row for 4 inputs fits 512 MiB";
  } catch (const usage_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("--memory-budget 512"), std::string::npos) << m;
    EXPECT_NE(m.find("'w' in rows of 50000000 elements"), std::string::npos) << m;
  }
  // TIES cuts the same tensor anywhere: it fits, in pieces under the budget.
  o.method = ClassicMethod::ties;
  const auto ties = piece_merger(o, "w", shape, 3, true);
  EXPECT_NO_THROW(check_fits(plan, *ties, "ties", "w", 200'000'000, 2));
  EXPECT_LT(plan.max_elements * static_cast<i64>(plan.bytes_per_element), i64{512} << 20);
}

TEST(PieceMerge, BudgetHoldsTheStatisticsOfEveryThread) {
  // TIES over 8 tasks counts a histogram per task and thread (512 KiB each) and keeps the ties
  // of each task's threshold (up to 4 MiB): on 64 threads about 300 MiB whatever the pieces.
  ClassicMergeOptions o;
  o.method = ClassicMethod::ties;
  for (int t = 0; t < 8; ++t) o.tasks.push_back({"t" + std::to_string(t), "x"});
  o.densities = {0.3};
  const std::vector<i64> shape{4096, 4096};
  const i64 numel = 4096 * 4096;
  const auto ties = piece_merger(o, "w", shape, 8, true);
  const auto held64 = ties->held_bytes(64), held2 = ties->held_bytes(2);
  EXPECT_GE(held64, std::uint64_t{8} * 64 * (512 << 10));
  EXPECT_EQ(held64 - held2, std::uint64_t{8} * 62 * (512 << 10));  // a histogram per task and thread
  const auto plan = plan_pieces(8, true, std::uint64_t{256} << 20, true);
  EXPECT_NO_THROW(check_fits(plan, *ties, "ties", "w", numel, 2));
  try {
    check_fits(plan, *ties, "ties", "w", numel, 64);
    FAIL() << "TIES' statistics on 64 threads fit 256 MiB";
  } catch (const usage_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("--memory-budget 256"), std::string::npos) << m;
    EXPECT_NE(m.find("tensor 'w', about"), std::string::npos) << m;
    EXPECT_NE(m.find("on 64 threads"), std::string::npos) << m;
  }
  // What only an L1 rescale reads is not held without one: TIES' kept magnitudes per block and
  // lane (16 MiB per task for a tensor of 2^30 elements; 9.5 MiB is all the rest on one thread).
  o.tasks.resize(1);
  const auto big = piece_merger(o, "w", {i64{1} << 15, i64{1} << 15}, 1, true);
  EXPECT_LT(big->held_bytes(1), std::uint64_t{10} << 20);
}

TEST(PieceMerge, PiecesGetWhatTheStatisticsLeaveOfTheBudget) {
  // 8 tasks of TIES on 2 threads hold about 29 MiB of statistics, 8 MiB of them inside the
  // process's reserve (96 MiB). A budget of the reserve, the rest of them and 2 MiB leaves pieces
  // of at most 43 690 elements (48 bytes each), where the plan alone would allow 500 000. The
  // bits are the whole tensor's all the same.
  static const TensorSet set({300, 700}, DType::F32, 8);
  ClassicMergeOptions o;
  o.method = ClassicMethod::ties;
  for (int t = 0; t < 8; ++t) o.tasks.push_back({"t" + std::to_string(t), "unused"});
  o.densities = {0.3};
  const auto held = piece_merger(o, "w", set.shape, 8, true)->held_bytes(2);
  ASSERT_GT(held, std::uint64_t{16} << 20);
  const auto beyond = held - (std::uint64_t{8} << 20);
  const auto plan = plan_pieces(8, true, (std::uint64_t{96} << 20) + beyond + (std::uint64_t{2} << 20), true);
  const auto most = (std::uint64_t{2} << 20) / plan.bytes_per_element;
  ASSERT_GT(static_cast<std::uint64_t>(set.numel()), most);
  std::vector<std::size_t> pieces;
  const auto parts = set.merge(o, 8, true, plan, 2, &pieces);
  ASSERT_GT(pieces.size(), 1u);
  for (const auto p : pieces) EXPECT_LE(p, most);
  const auto whole = set.merge(o, 8, true, set.numel(), 1);
  EXPECT_EQ(0, std::memcmp(whole.data(), parts.data(), whole.size() * sizeof(float)));
}

}  // namespace
}  // namespace revmerge
