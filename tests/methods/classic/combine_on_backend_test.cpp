// The element-wise full-model merges on a backend (combine_on_backend.hpp) give the CPU merge's
// bits: on the CPU backend (the steps' routines run by the CPU) and on the deferred test backend
// (a discrete GPU's memory and ordering, on the CPU), for any piece size, from f32, bf16 and f64
// files (the files' bytes widened by the backend; f64 in shorter pieces), and a non-finite input
// is named as the CPU names it. What runs on a GPU is these routines; tools/gpu-check.sh runs them there.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>

#include "backend/backend.hpp"
#include "backend/backend_cases.hpp"
#include "backend/deferred_backend.hpp"
#include "methods/classic/classic_internal.hpp"
#include "methods/classic/combine_on_backend.hpp"
#include "methods/classic/tensor_set.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;
using test::Case;
using test::TensorSet;

// The merged tensor on `backend` in pieces of at most `max_piece` elements, copied in chunks of
// `chunk`.
std::vector<float> merge_on(Backend& backend, const TensorSet& set, const ClassicMergeOptions& o, std::size_t n,
                            bool base, i64 max_piece, i64 chunk) {
  TensorSources src;
  if (base) src = {&set.tensors[0], "the base", {}, {}};
  for (std::size_t t = 0; t < n; ++t) {
    src.models.push_back(&set.tensors[1 + t]);
    src.model_where.push_back("task " + std::to_string(t));
  }
  std::vector<float> result(static_cast<std::size_t>(set.numel()), std::nanf(""));
  std::vector<int> written(result.size(), 0);
  CombineOnBackend on(backend, n, base, max_piece, chunk);
  on.merge(o, "w", set.shape, src, [&](std::uint64_t first, std::span<const float> part) {
    std::memcpy(result.data() + first, part.data(), part.size_bytes());
    for (std::size_t k = 0; k < part.size(); ++k) ++written[first + k];
  });
  for (std::size_t k = 0; k < written.size(); ++k)
    if (written[k] != 1) ADD_FAILURE() << "element " << k << " written " << written[k] << " times";
  return result;
}


const Case kCases[] = {
    {"linear", ClassicMethod::linear, 3, false, [](ClassicMergeOptions& o) { o.weights = {0.5, 0.3, 0.2}; }},
    {"task_arithmetic", ClassicMethod::task_arithmetic, 3, true,
     [](ClassicMergeOptions& o) { o.weights = {1, 0.5, -0.3}; o.lambda = 0.7; }},
    {"ties", ClassicMethod::ties, 3, true, [](ClassicMergeOptions& o) { o.densities = {0.3, 0.5, 0.2}; }},
    {"ties_rescaled_by_count", ClassicMethod::ties, 3, true,
     [](ClassicMergeOptions& o) {
       o.densities = {0.3, 0.5, 0.2};
       o.rescale = true;
       o.election = SignElection::count;
     }},
    {"magnitude_prune", ClassicMethod::magnitude_prune, 2, true, [](ClassicMergeOptions& o) { o.densities = {0.6}; }},
    {"ties_all_or_nothing", ClassicMethod::ties, 3, true,
     [](ClassicMergeOptions& o) { o.densities = {1.0, 0.0, 0.4}; o.rescale = true; }},
    {"dare_ties", ClassicMethod::dare_ties, 3, true,
     [](ClassicMergeOptions& o) { o.densities = {0.3, 0.5, 0.2}; o.seed = 7; }},
    {"dare_linear", ClassicMethod::dare_linear, 3, true,
     [](ClassicMergeOptions& o) { o.densities = {0.4}; o.rescale = false; o.seed = 3; }},
    {"dare_nothing_kept", ClassicMethod::dare_linear, 2, true,
     [](ClassicMergeOptions& o) { o.densities = {0.0, 0.7}; o.seed = 3; }},
    {"breadcrumbs_ties", ClassicMethod::breadcrumbs_ties, 3, true,
     [](ClassicMergeOptions& o) { o.densities = {0.5}; o.gammas = {0.05, 0.1, 0.02}; o.rescale = true; }},
    {"breadcrumbs", ClassicMethod::breadcrumbs, 2, true,
     [](ClassicMergeOptions& o) { o.densities = {0.3}; o.gammas = {0.01}; }},
    {"slerp", ClassicMethod::slerp, 1, true, [](ClassicMergeOptions& o) { o.t = 0.3; }},
    {"nearswap", ClassicMethod::nearswap, 1, true, [](ClassicMergeOptions& o) { o.t = 0.01; }},
    {"model_stock", ClassicMethod::model_stock, 3, true, [](ClassicMergeOptions&) {}},
    {"model_stock_rows", ClassicMethod::model_stock, 3, true, [](ClassicMergeOptions& o) { o.filter_wise = true; }},
    // 45 sums: the lanes' blocks are 6 statistics blocks long.
    {"model_stock_nine", ClassicMethod::model_stock, 9, true, [](ClassicMergeOptions&) {}},
    // Two vectors: the host's Gram sums at once (sphere_sums.cpp) at their fewest.
    {"model_stock_two", ClassicMethod::model_stock, 2, true, [](ClassicMergeOptions&) {}},
    {"passthrough", ClassicMethod::passthrough, 1, false, [](ClassicMergeOptions& o) { o.scales = {0.37}; }},
    {"nuslerp", ClassicMethod::nuslerp, 2, true, [](ClassicMergeOptions& o) { o.weights = {0.3, 0.7}; }},
    {"nuslerp_rows", ClassicMethod::nuslerp, 2, false,
     [](ClassicMergeOptions& o) { o.weights = {0.6, 0.4}; o.nuslerp_flatten = false; }},
    {"nuslerp_columns", ClassicMethod::nuslerp, 2, true,
     [](ClassicMergeOptions& o) { o.weights = {0.5, 0.2}; o.nuslerp_flatten = false; o.nuslerp_row_wise = true; }},
    {"multislerp", ClassicMethod::multislerp, 3, true, [](ClassicMergeOptions& o) { o.weights = {1, 2, 3}; }},
    {"multislerp_one", ClassicMethod::multislerp, 1, true, [](ClassicMergeOptions&) {}},
    {"multislerp_nobase", ClassicMethod::multislerp, 3, false, [](ClassicMergeOptions&) {}},
    // Base first among the models; a tol that stops early; iterations cut short by max_iter; the
    // models without a base.
    {"karcher", ClassicMethod::karcher, 3, true, [](ClassicMergeOptions&) {}},
    {"karcher_converged", ClassicMethod::karcher, 3, true, [](ClassicMergeOptions& o) { o.tol = 1e-2; o.max_iter = 50; }},
    {"karcher_one_step", ClassicMethod::karcher, 3, true, [](ClassicMergeOptions& o) { o.max_iter = 1; }},
    {"karcher_nobase", ClassicMethod::karcher, 3, false, [](ClassicMergeOptions& o) { o.max_iter = 3; }},
    {"karcher_one_model", ClassicMethod::karcher, 1, true, [](ClassicMergeOptions& o) { o.max_iter = 3; }},
    // The TensorSet's changes are multiples of 1/64: variances tie often at the threshold.
    {"sce", ClassicMethod::sce, 3, true, [](ClassicMergeOptions& o) { o.select_topk = 0.3; }},
    {"sce_every_element", ClassicMethod::sce, 3, true, [](ClassicMergeOptions&) {}},
    {"sce_few", ClassicMethod::sce, 4, true, [](ClassicMergeOptions& o) { o.select_topk = 1e-4; }},
    {"sce_nothing_kept", ClassicMethod::sce, 2, true, [](ClassicMergeOptions& o) { o.select_topk = 0; }},
    // ε 0.1: some 40 % of each task's changes count, shared and unique ones both.
    {"ram", ClassicMethod::ram, 3, true, [](ClassicMergeOptions& o) { o.epsilons = {0.1}; }},
    {"ram_default_epsilon", ClassicMethod::ram, 2, true, [](ClassicMergeOptions&) {}},
    {"ramplus_tl", ClassicMethod::ramplus_tl, 3, true,
     [](ClassicMergeOptions& o) { o.epsilons = {0.1}; o.ram_r = 0.5; o.ram_alpha = 5; }},  // α above the ratio: not clamped
    // Rows of 700: the quartiles of 210 000 importances (many tied: the changes are multiples of
    // 1/64), pieces of whole rows.
    {"arcee_fusion", ClassicMethod::arcee_fusion, 1, true, [](ClassicMergeOptions&) {}},
};

using Pieces = std::vector<std::pair<i64, i64>>;  // (largest piece, chunk)

// Case c merged on the CPU backend and the deferred backend (or on `gpu` alone), in pieces and
// chunks of each of `pieces`, from f32, bf16 and f64 files of `shape`, gives the CPU merge's bits.
void expect_the_cpus_bits(const Case& c, const std::vector<i64>& shape, const Pieces& pieces,
                          Backend* gpu = nullptr) {
  ClassicMergeOptions o;
  o.method = c.method;
  for (std::size_t t = 0; t < c.n; ++t) o.tasks.push_back({"t" + std::to_string(t), "unused"});
  c.set(o);
  ASSERT_EQ("", backend_combine_refusal(o));
  for (const DType dtype : {DType::F32, DType::BF16, DType::F64}) {
    const TensorSet set(shape, dtype, std::max(3, static_cast<int>(c.n)));
    const auto cpu = set.merge(o, c.n, c.base, set.numel(), 2);
    auto cpu_backend = make_cpu_backend({2, 0});
    auto deferred = test::make_deferred_backend();
    const auto backends = gpu ? std::vector<Backend*>{gpu} : std::vector<Backend*>{cpu_backend.get(), deferred.get()};
    for (Backend* b : backends)
      for (const auto& [piece, chunk] : pieces) {
        const auto on = merge_on(*b, set, o, c.n, c.base, piece, chunk);
        ASSERT_EQ(0, std::memcmp(cpu.data(), on.data(), cpu.size() * sizeof(float)))
            << c.name << " (" << dtype_name(dtype) << ") on " << b->name() << ", pieces of " << piece
            << " in chunks of " << chunk << ": differs from the CPU merge";
      }
    // The merge changed something (a broken merge copying an input would pass the comparison),
    // except where it keeps nothing of the tasks: then it is the base.
    std::vector<float> first(cpu.size());
    set.file->read(*set.tensors[c.base ? 0 : 1].info, first);
    const bool is_the_base = std::string(c.name) == "sce_nothing_kept";
    EXPECT_EQ(is_the_base, 0 == std::memcmp(cpu.data(), first.data(), cpu.size() * sizeof(float))) << c.name;
  }
}

class CombineOnBackendTest : public ::testing::TestWithParam<Case> {};

TEST_P(CombineOnBackendTest, GivesTheCpuMergesBitsOnEveryBackendAndPieceSize) {
  // 210 000 elements: 52 statistics blocks (4 096), pieces cutting them anywhere; chunks that
  // cut pieces unevenly, so that both pinned slots each way are reused (on the deferred backend,
  // a slot refilled before its copy ran would change the result).
  expect_the_cpus_bits(GetParam(), {300, 700},
                       {{210000, 30001}, {4999, 4999}, {65536, 10000}, {100000, i64{1} << 22}});
}

INSTANTIATE_TEST_SUITE_P(Methods, CombineOnBackendTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

// The methods that work by rows. DELLA ranks each row along the second axis (on a backend, each
// element counts its row: a row's length per element, hence the smaller tensors): rows of a
// matrix, rows `inner` apart in a 3-D tensor, and a vector as one row; pieces of whole groups of
// rows, cut anywhere else. arcee_fusion's rows lie along the last axis (of 300, 8 and 3 000).
const Case kRowCases[] = {
    {"della", ClassicMethod::della, 3, true,
     [](ClassicMergeOptions& o) { o.densities = {0.4, 0.6, 0.5}; o.epsilons = {0.1, 0.2, 0.05}; o.seed = 9; }},
    {"della_linear", ClassicMethod::della_linear, 3, true,
     [](ClassicMergeOptions& o) { o.densities = {0.5}; o.epsilons = {0.15}; o.weights = {0.5, 1, 0.3}; o.seed = 2; }},
    {"della_unscaled", ClassicMethod::della, 2, true,
     [](ClassicMergeOptions& o) { o.densities = {0.3}; o.epsilons = {0.1}; o.rescale = false; o.seed = 4; }},
    {"della_nothing_kept", ClassicMethod::della, 2, true,
     [](ClassicMergeOptions& o) { o.densities = {0.0, 0.7}; o.epsilons = {0.0, 0.2}; o.seed = 1; }},
    {"arcee_fusion", ClassicMethod::arcee_fusion, 1, true, [](ClassicMergeOptions&) {}},
};

class RowsOnBackendTest : public ::testing::TestWithParam<Case> {};

TEST_P(RowsOnBackendTest, GivesTheCpuMergesBitsForEveryRowLayout) {
  const Case& c = GetParam();
  expect_the_cpus_bits(c, {40, 300}, {{12000, 3001}, {4999, 1000}, {2000, 2000}});
  expect_the_cpus_bits(c, {6, 50, 8}, {{2400, 700}, {1000, 999}});
  expect_the_cpus_bits(c, {3000}, {{6000, 1024}});  // f64 pieces half as long
}

INSTANTIATE_TEST_SUITE_P(Methods, RowsOnBackendTest, ::testing::ValuesIn(kRowCases),
                         [](const auto& info) { return std::string(info.param.name); });

// The same cases on the GPU, where one is present (ctest label gpu): its kernels run the same
// routines, and those that take another way there (a sort where the routine counts) must still
// give the CPU's bits.
class CombineOnGpuTest : public ::testing::TestWithParam<Case> {};

TEST_P(CombineOnGpuTest, GivesTheCpuMergesBits) {
  REVMERGE_BACKEND_OR_SKIP(gpu, "cuda");
  expect_the_cpus_bits(GetParam(), {300, 700}, {{210000, 30001}, {65536, 10000}}, gpu.get());
}

INSTANTIATE_TEST_SUITE_P(Methods, CombineOnGpuTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name) + "_cuda"; });

class RowsOnGpuTest : public ::testing::TestWithParam<Case> {};

TEST_P(RowsOnGpuTest, GivesTheCpuMergesBitsForEveryRowLayout) {
  REVMERGE_BACKEND_OR_SKIP(gpu, "cuda");
  const Case& c = GetParam();
  expect_the_cpus_bits(c, {40, 300}, {{12000, 3001}, {2000, 2000}}, gpu.get());
  expect_the_cpus_bits(c, {6, 50, 8}, {{2400, 700}}, gpu.get());
  expect_the_cpus_bits(c, {3000}, {{6000, 1024}}, gpu.get());
  expect_the_cpus_bits(c, {64, 11008}, {{11008 * 64, 11008 * 16}}, gpu.get());  // a llama MLP's row length
}

INSTANTIATE_TEST_SUITE_P(Methods, RowsOnGpuTest, ::testing::ValuesIn(kRowCases),
                         [](const auto& info) { return std::string(info.param.name) + "_cuda"; });

TEST(CombineOnBackend, NamesTheFirstNonFiniteInputAsTheCpuDoes) {
  const TensorSet set({300, 700});
  ClassicMergeOptions o;
  o.method = ClassicMethod::ties;
  o.tasks = {{"t0", "unused"}, {"t1", "unused"}};
  o.densities = {0.5};
  auto deferred = test::make_deferred_backend();
  // A copy of the set with the bad values written into the file itself.
  std::vector<TensorData> data;
  std::vector<std::vector<float>> all(3, std::vector<float>(static_cast<std::size_t>(set.numel())));
  set.file->read(*set.tensors[0].info, all[0]);
  set.file->read(*set.tensors[1].info, all[1]);
  set.file->read(*set.tensors[2].info, all[2]);
  all[2][123456] = INFINITY;
  all[0][200000] = NAN;
  const char* names[] = {"base", "t0", "t1"};
  for (int t = 0; t < 3; ++t)
    data.push_back({{names[t], DType::F32, set.shape}, std::as_bytes(std::span<const float>(all[t]))});
  test::TempDir dir;
  write_safetensors(dir / "bad.safetensors", data);
  SafetensorsFile file(dir / "bad.safetensors");
  const CheckpointTensor base{&file, &file.at("base")}, t0{&file, &file.at("t0")}, t1{&file, &file.at("t1")};
  const TensorSources src{&base, "the base", {&t0, &t1}, {"task 't0'", "task 't1'"}};
  // Pieces of 100 000: the task's Inf (piece 1) is met before the base's NaN (piece 2); in one
  // piece the base is read first.
  for (const i64 piece : {i64{100000}, set.numel()}) {
    std::string cpu_message, backend_message;
    try {
      const PiecePlan plan{piece, 0, 24};
      auto merger = piece_merger(o, "w", set.shape, 2, true);
      TensorInputs in;
      FloatBuffer out;
      merge_in_pieces(*merger, "w", set.shape, src, plan, in, out, [](std::uint64_t, std::span<const float>) {}, 2);
    } catch (const format_error& e) {
      cpu_message = e.what();
    }
    try {
      CombineOnBackend on(*deferred, 2, true, piece);
      on.merge(o, "w", set.shape, src, [](std::uint64_t, std::span<const float>) {});
    } catch (const format_error& e) {
      backend_message = e.what();
    }
    EXPECT_NE("", cpu_message);
    EXPECT_EQ(cpu_message, backend_message) << "pieces of " << piece;
    EXPECT_NE(std::string::npos, backend_message.find(piece < set.numel() ? "element 123456 (task 't1')"
                                                                          : "element 200000 (the base)"))
        << backend_message;
  }
}

std::string file_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(CombineOnBackend, WholeModelsOnTheDeferredBackendAreTheCpusFiles) {
  // mergekit's golden models, f32 and bf16 (the bf16 bytes widened by the backend), merged in
  // pieces of some tens of thousands of elements (a budget just above the process's reserve).
  const std::filesystem::path golden = std::filesystem::path(REVMERGE_SOURCE_DIR) / "tests/fixtures/golden/mergekit";
  for (const auto& [folder, n] : {std::pair{golden, 3}, std::pair{golden / "bf16", 2}})
    for (const auto method : {ClassicMethod::ties, ClassicMethod::dare_ties, ClassicMethod::task_arithmetic,
                              ClassicMethod::slerp, ClassicMethod::model_stock, ClassicMethod::nuslerp,
                              ClassicMethod::multislerp, ClassicMethod::della, ClassicMethod::ramplus_tl,
                              ClassicMethod::sce, ClassicMethod::karcher, ClassicMethod::arcee_fusion}) {
      test::TempDir tmp;
      ClassicMergeOptions o;
      o.method = method;
      o.base = folder / "base";
      const int models = method == ClassicMethod::slerp || method == ClassicMethod::arcee_fusion ? 1
                         : method == ClassicMethod::nuslerp                                     ? 2
                                                                                                : n;
      for (int t = 0; t < models; ++t)
        o.tasks.push_back({"ft" + std::to_string(t), folder / ("ft" + std::to_string(t))});
      if (method == ClassicMethod::slerp) o.t = 0.4;
      else if (method != ClassicMethod::model_stock && method != ClassicMethod::ramplus_tl &&
               method != ClassicMethod::sce && method != ClassicMethod::karcher && method != ClassicMethod::arcee_fusion)
        o.weights = std::vector<double>(o.tasks.size(), 0.7);
      if (method == ClassicMethod::sce) o.select_topk = 0.4;
      if (method == ClassicMethod::ties || method == ClassicMethod::dare_ties || method == ClassicMethod::della)
        o.densities = {0.3};
      if (method == ClassicMethod::della) o.epsilons = {0.1};
      o.seed = 5;
      o.memory_budget = std::uint64_t{97} << 20;
      o.out = tmp / "cpu";
      merge_classic(o);
      o.out = tmp / "deferred";
      merge_classic_checkpoints_on(o, [] { return test::make_deferred_backend(); });
      const auto cpu = file_bytes(tmp / "cpu" / "model.safetensors");
      EXPECT_FALSE(cpu.empty());
      EXPECT_TRUE(cpu == file_bytes(tmp / "deferred" / "model.safetensors"))
          << to_string(method) << " on " << folder << ": the backend's model differs from the CPU's";
    }
}

ParameterSetting setting(std::vector<ParameterSetting::Condition> conditions) { return {std::move(conditions)}; }

// mergekit's layer slices (the golden configs ties_slices, slerp_slices, passthrough_stack,
// built here as options): each slice merged on the deferred backend with its own tasks, base
// and parameter gradients gives the CPU's file, byte for byte; a slice the backend cannot run
// is refused by name before anything is written.
TEST(CombineOnBackend, LayerSlicesOnTheDeferredBackendAreTheCpusFiles) {
  const auto deep = std::filesystem::path(REVMERGE_SOURCE_DIR) / "tests/fixtures/golden/mergekit/deep";
  ClassicMergeOptions ties;
  ties.method = ClassicMethod::ties;
  ties.base = deep / "base";
  ties.tensor_parameters["density"] = setting({{"", {0.7}}});
  ties.slices = {
      {{{deep / "base", 0, 3, {}},
        {deep / "ft0", 0, 3, {{"weight", setting({{"", {1.0}}})}}},
        {deep / "ft1", 1, 4, {{"weight", setting({{"", {0.2, 0.9}}})}}}},
       {},
       {}},
      {{{deep / "base", 3, 5, {}},
        {deep / "ft1", 3, 5, {{"weight", setting({{"", {0.5}}})}}},
        {deep / "ft2", 3, 5, {{"weight", setting({{"", {0.8}}})}}}},
       {},
       {{"density", setting({{"", {0.4}}})}}}};
  ClassicMergeOptions slerp;
  slerp.method = ClassicMethod::slerp;
  slerp.base = deep / "ft0";
  slerp.tensor_parameters["t"] = setting({{"self_attn", {0, 0.5, 0.3, 0.7, 1}}, {"mlp", {1, 0.5, 0.7, 0.3, 0}}, {"", {0.5}}});
  slerp.slices = {{{{deep / "ft0", 0, 5, {}}, {deep / "ft2", 0, 5, {}}}, {}, {}}};
  ClassicMergeOptions stack;
  stack.method = ClassicMethod::passthrough;
  stack.slices = {{{{deep / "ft0", 0, 3, {}}}, {}, {}},
                  {{{deep / "ft1", 2, 5, {{"scale", setting({{"o_proj", {0.5}}, {"", {1.0}}})}}}}, {}, {}}};
  ClassicMergeOptions fusion;
  fusion.method = ClassicMethod::arcee_fusion;
  fusion.base = deep / "base";
  fusion.slices = {{{{deep / "base", 0, 3, {}}, {deep / "ft0", 0, 3, {}}}, {}, {}},
                   {{{deep / "base", 3, 5, {}}, {deep / "ft1", 3, 5, {}}}, {}, {}}};
  for (auto* o : {&ties, &slerp, &stack, &fusion}) {
    test::TempDir tmp;
    o->memory_budget = std::uint64_t{97} << 20;
    o->out = tmp / "cpu";
    merge_classic(*o);
    o->out = tmp / "deferred";
    merge_classic_checkpoints_on(*o, [] { return test::make_deferred_backend(); });
    const auto cpu = file_bytes(tmp / "cpu" / "model.safetensors");
    EXPECT_FALSE(cpu.empty());
    EXPECT_TRUE(cpu == file_bytes(tmp / "deferred" / "model.safetensors"))
        << to_string(o->method) << " slices: the backend's model differs from the CPU's";
  }
}

TEST(CombineOnBackend, TakesEveryMethodAndRefusesMoreModelsThanAStepHolds) {
  ClassicMergeOptions o;
  o.tasks = {{"a", "unused"}, {"b", "unused"}};
  for (const char* name : {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune", "slerp",
                           "nearswap", "model_stock", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce",
                           "nuslerp", "multislerp", "karcher", "ram", "ramplus_tl", "arcee_fusion", "passthrough"}) {
    o.method = parse_classic_method(name);
    EXPECT_EQ("", backend_combine_refusal(o)) << name;
  }
  for (const auto method : {ClassicMethod::cat, ClassicMethod::svd}) {  // LoRA factors' merges
    o.method = method;
    EXPECT_NE(std::string::npos, backend_combine_refusal(o).find("runs on the CPU only")) << to_string(method);
  }
  o.method = ClassicMethod::linear;
  o.tasks.resize(kernels::kMaxElementwiseInputs + 1, {"c", "unused"});
  EXPECT_NE(std::string::npos, backend_combine_refusal(o).find("at most 64 models merge on a GPU"))
      << backend_combine_refusal(o);
}

}  // namespace
}  // namespace revmerge
