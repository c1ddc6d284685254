// The batched PT-SVD engine on every backend (the CPU's always; the GPU's where one is usable)
// against the CPU's randomized SVD and against matrices of known spectrum: the same error
// bounds, the same singular values to rounding, batches equal to one task at a time, CholeskyQR2
// holding on decaying spectra and Householder taking over where it cannot (exactly low-rank and
// zero deltas), deltas formed from BF16 bytes, non-finite elements found; and `revmerge
// compress` and the full-model merge on a device (the GPU, and the deferred backend that
// behaves like one) beside the CPU. Cases named `cuda` need a GPU: ctest labels them `gpu` and
// reports them skipped, with the reason, where none is usable.
#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <random>
#include <span>
#include <tuple>

#include "backend/backend_cases.hpp"
#include "backend/deferred_backend.hpp"
#include "backend/registry.hpp"
#include "methods/lowrank/batched_pt_svd.hpp"
#include "methods/lowrank/lowrank_fixtures.hpp"
#include "methods/lowrank/pt_svd.hpp"
#include "methods/lowrank/randomized_svd.hpp"
#include "methods/full_model_source.hpp"
#include "methods/on_backend.hpp"
#include "revmerge/compress.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/rmm.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

RawWeight f64_weight(const std::vector<double>& v) {
  return {reinterpret_cast<const std::byte*>(v.data()), DType::F64};
}

double sum_sq(const std::vector<double>& a) {
  double s = 0;
  for (const auto x : a) s += x * x;
  return s;
}

// max |UᵀU − I| over the k columns of the column-major m × k matrix u.
double orthonormality_error(const std::vector<double>& u, i64 m, i64 k) {
  double worst = 0;
  for (i64 a = 0; a < k; ++a)
    for (i64 b = 0; b < k; ++b) {
      double d = 0;
      for (i64 i = 0; i < m; ++i) d += u[a * m + i] * u[b * m + i];
      worst = std::max(worst, std::abs(d - (a == b ? 1.0 : 0.0)));
    }
  return worst;
}

class BatchedPtSvdOn : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchedPtSvdOn, DecayingSpectraMatchTheCpuInOneBatchOrMany) {
  REVMERGE_BACKEND_OR_SKIP(backend, GetParam());
  BatchedPtSvd engine(*backend);
  const i64 m = 120, n = 80, k = 10;
  const RandomizedSvdOptions o{k, 8, 2, 3, 4};
  std::vector<std::vector<double>> sigmas(3), deltas;
  for (i64 j = 0; j < 80; ++j) {
    sigmas[0].push_back(std::exp(-0.15 * double(j)));
    sigmas[1].push_back(1.0 / double((j + 1) * (j + 1)) + 1e-3);
    sigmas[2].push_back(std::pow(0.9, double(j)));
  }
  std::vector<RawWeight> raws;
  for (std::size_t t = 0; t < 3; ++t) deltas.push_back(test::with_spectrum(m, n, sigmas[t], 7 + unsigned(t)));
  for (const auto& d : deltas) raws.push_back(f64_weight(d));
  const std::vector<double> zeros(static_cast<std::size_t>(m * n), 0.0);
  const auto batched = engine.run(f64_weight(zeros), raws, m, n, o);
  // Full rank everywhere: CholeskyQR2 holds for every task and multiply (2q + 2 of them).
  EXPECT_EQ(engine.counts().orthonormalized, 3 * (2 * 2 + 2));
  EXPECT_EQ(engine.counts().householder, 0);
  EXPECT_EQ(engine.counts().redone, 0);  // one pass, no host decision inside
  engine.limit_memory(engine.work_bytes(1, m, n, o, 8));  // one task per batch
  const auto single = engine.run(f64_weight(zeros), raws, m, n, o);
  ASSERT_EQ(batched.size(), 3u);
  for (std::size_t t = 0; t < 3; ++t) {
    const auto& g = batched[t].svd;
    const double total = sum_sq(deltas[t]);
    EXPECT_EQ(batched[t].nonfinite_at, -1);
    EXPECT_NEAR(batched[t].norm_sq, total, 1e-12 * total);
    ASSERT_EQ(g.k, k);
    const double got = test::error_sq(deltas[t], g, m, n), best = test::tail(sigmas[t], k);
    EXPECT_LE(std::sqrt(got), 1.05 * std::sqrt(best)) << "task " << t;
    double kept = 0;
    for (const auto s : g.s) kept += s * s;
    EXPECT_NEAR(got, total - kept, 1e-9 * total) << "the reported error is the true one";
    EXPECT_LT(orthonormality_error(g.u, m, k), 1e-12);
    EXPECT_LT(orthonormality_error(g.v, n, k), 1e-12);
    const auto cpu = randomized_svd(deltas[t], m, n, o);
    for (i64 c = 0; c < k; ++c) {
      EXPECT_NEAR(g.s[c], cpu.s[c], 1e-6 * g.s[0]) << "task " << t << ", σ" << c;
      EXPECT_NEAR(single[t].svd.s[c], g.s[c], 1e-12 * g.s[0]) << "task " << t << ", σ" << c;
    }
    EXPECT_NEAR(g.captured, cpu.captured, 1e-6 * total);
  }
}

// Six tasks in one batch: the fine-tunes' bytes pass through two staging buffers and two device
// buffers in turn on the copy stream, so a buffer written again before the Δ that reads it ran
// (or read before its upload ran) gives a task another task's delta — on the deferred backend,
// whose copies run as soon as the host waits for a staging buffer.
TEST_P(BatchedPtSvdOn, SixTasksInOneBatchEachGetTheirOwnDelta) {
  REVMERGE_BACKEND_OR_SKIP(backend, GetParam());
  BatchedPtSvd engine(*backend);
  const i64 m = 40, n = 30, k = 4;
  const RandomizedSvdOptions o{k, 4, 1, 5, 6};
  std::vector<std::vector<double>> deltas;
  std::vector<RawWeight> raws;
  for (unsigned t = 0; t < 6; ++t) {
    std::vector<double> sigma;
    for (i64 j = 0; j < 30; ++j) sigma.push_back(double(t + 1) * std::pow(0.7, double(j)));
    deltas.push_back(test::with_spectrum(m, n, sigma, 40 + t));
  }
  for (const auto& d : deltas) raws.push_back(f64_weight(d));
  const std::vector<double> zeros(static_cast<std::size_t>(m * n), 0.0);
  const auto r = engine.run(f64_weight(zeros), raws, m, n, o);
  for (std::size_t t = 0; t < 6; ++t) {
    const double total = sum_sq(deltas[t]);
    EXPECT_NEAR(r[t].norm_sq, total, 1e-12 * total) << "task " << t;
    const auto cpu = randomized_svd(deltas[t], m, n, o);
    for (i64 c = 0; c < k; ++c) EXPECT_NEAR(r[t].svd.s[c], cpu.s[c], 1e-6 * cpu.s[0]) << "task " << t << ", σ" << c;
  }
}

// Into the merge's stacks: the factors lora_factors makes of run()'s U, S, V, to the bit (the
// same arithmetic on the same numbers), zero past the rank; in one batch and in one per task.
TEST_P(BatchedPtSvdOn, IntoStacksAreTheFactorsOfRun) {
  REVMERGE_BACKEND_OR_SKIP(backend, GetParam());
  BatchedPtSvd engine(*backend);
  const i64 m = 60, n = 44, k = 6, r = 9, tasks = 3;
  const RandomizedSvdOptions o{k, 4, 1, 5, 6};
  std::vector<double> sigma;
  for (i64 j = 0; j < n; ++j) sigma.push_back(std::pow(0.8, double(j)));
  std::vector<std::vector<double>> deltas;
  std::vector<RawWeight> raws;
  for (unsigned t = 0; t < tasks; ++t) deltas.push_back(test::with_spectrum(m, n, sigma, 30 + t));
  for (const auto& d : deltas) raws.push_back(f64_weight(d));
  const std::vector<double> zeros(static_cast<std::size_t>(m * n), 0.0);
  LinearWeight w;
  w.in = m;
  w.out = n;
  for (const bool one_per_batch : {false, true}) {
    SCOPED_TRACE(one_per_batch ? "one task per batch" : "one batch");
    if (one_per_batch) engine.limit_memory(engine.work_bytes(1, m, n, o, 8));
    const auto want = engine.run(f64_weight(zeros), raws, m, n, o);
    std::vector<float> a_want(static_cast<std::size_t>(tasks * r * m), 0.0f),
        b_want(static_cast<std::size_t>(tasks * n * r), 0.0f);
    for (i64 t = 0; t < tasks; ++t)
      lora_factors(want[t].svd, k, w, a_want.data() + t * r * m, b_want.data() + t * n * r, r);
    auto da = backend->allocate(a_want.size() * sizeof(float));
    auto db = backend->allocate(b_want.size() * sizeof(float));
    const auto got =
        engine.run_into_stacks(f64_weight(zeros), raws, m, n, o, {da.f32(), db.f32(), r});
    EXPECT_EQ(test::to_host(*backend, da, a_want.size()), a_want);
    EXPECT_EQ(test::to_host(*backend, db, b_want.size()), b_want);
    for (i64 t = 0; t < tasks; ++t) {
      EXPECT_EQ(got[t].svd.s, want[t].svd.s);
      EXPECT_EQ(got[t].norm_sq, want[t].norm_sq);
      EXPECT_TRUE(got[t].svd.u.empty() && got[t].svd.v.empty());
    }
  }
  EXPECT_THROW(engine.run_into_stacks(f64_weight(zeros), raws, m, n, o, {nullptr, nullptr, k - 1}),
               usage_error);
}

TEST_P(BatchedPtSvdOn, ExactlyLowRankAndZeroDeltasComeBackExactly) {
  REVMERGE_BACKEND_OR_SKIP(backend, GetParam());
  BatchedPtSvd engine(*backend);
  // Rank 5 under a sketch of 12 columns: every sketch is rank-deficient. CholeskyQR2 may still
  // hold there (its trailing columns are orthonormalised rounding, and the range of the sketch
  // is kept) or fail, whichever the rounding gives; a zero Δ fails the first Cholesky factor of
  // each of its four re-orthonormalisations outright: the batch's pass (no host decision) gives
  // it back, and it is redone on its own, where Householder QR takes those.
  const i64 m = 50, n = 70;
  const auto a = test::with_spectrum(m, n, {5, 3, 2, 1, 0.5}, 3);
  const std::vector<double> zeros(static_cast<std::size_t>(m * n), 0.0);
  const std::vector<RawWeight> raws{f64_weight(a), f64_weight(zeros)};
  const auto r = engine.run(f64_weight(zeros), raws, m, n, {8, 4, 1, 0, 0});
  EXPECT_GE(engine.counts().redone, 1);
  EXPECT_EQ(engine.counts().orthonormalized, (2 + engine.counts().redone) * (2 * 1 + 2));
  EXPECT_GE(engine.counts().householder, 4);
  EXPECT_LE(test::error_sq(a, r[0].svd, m, n), 1e-20 * sum_sq(a));
  EXPECT_LT(orthonormality_error(r[0].svd.u, m, 8), 1e-12);
  EXPECT_EQ(r[1].norm_sq, 0.0);
  for (const auto s : r[1].svd.s) EXPECT_EQ(s, 0.0);
  EXPECT_LT(orthonormality_error(r[1].svd.u, m, 8), 1e-12);
}

TEST_P(BatchedPtSvdOn, Bf16BytesAndNonFiniteElements) {
  REVMERGE_BACKEND_OR_SKIP(backend, GetParam());
  BatchedPtSvd engine(*backend);
  const i64 m = 40, n = 30;
  std::mt19937 rng(2);
  std::normal_distribution<float> g;
  std::vector<float> base(static_cast<std::size_t>(m * n)), ft(base.size());
  for (auto& x : base) x = g(rng);
  for (std::size_t i = 0; i < ft.size(); ++i) ft[i] = base[i] + 0.01f * g(rng);
  std::vector<std::byte> base16(base.size() * 2), ft16(ft.size() * 2), bad16(ft.size() * 2);
  convert_from_f32(base.data(), DType::BF16, base16.data(), base.size());
  convert_from_f32(ft.data(), DType::BF16, ft16.data(), ft.size());
  auto bad = ft;
  bad[901] = INFINITY;
  bad[777] = NAN;
  convert_from_f32(bad.data(), DType::BF16, bad16.data(), bad.size());
  // The delta the host forms from the same bytes.
  std::vector<double> b64(base.size()), f64(ft.size()), delta(ft.size());
  convert_to_f64(DType::BF16, base16.data(), b64.data(), b64.size());
  convert_to_f64(DType::BF16, ft16.data(), f64.data(), f64.size());
  for (std::size_t i = 0; i < delta.size(); ++i) delta[i] = f64[i] - b64[i];
  const std::vector<RawWeight> raws{{ft16.data(), DType::BF16}, {bad16.data(), DType::BF16}};
  const RandomizedSvdOptions o{6, 4, 2, 1, 2};
  const auto r = engine.run({base16.data(), DType::BF16}, raws, m, n, o);
  EXPECT_EQ(r[0].nonfinite_at, -1);
  EXPECT_NEAR(r[0].norm_sq, sum_sq(delta), 1e-12 * sum_sq(delta));
  EXPECT_EQ(r[1].nonfinite_at, 777);
  const auto only_good = engine.run({base16.data(), DType::BF16}, {raws.data(), 1}, m, n, o);
  const auto cpu = randomized_svd(delta, m, n, o);
  for (i64 c = 0; c < 6; ++c) EXPECT_NEAR(only_good[0].svd.s[c], cpu.s[c], 1e-6 * cpu.s[0]) << c;
}

INSTANTIATE_TEST_SUITE_P(Backends, BatchedPtSvdOn, ::testing::ValuesIn(test::all_backend_names()),
                         [](const auto& info) { return info.param; });

// The device cases: the GPU through the public entry points (its device option), the deferred
// backend through their _on seams.
class OnDevice : public ::testing::TestWithParam<std::string> {
 protected:
  bool gpu() const { return GetParam() == "cuda"; }
  BackendFactory factory() const {
    return [] { return test::make_deferred_backend(); };
  }
};

// Also for GPT-2's Conv1D weights (stored in × out: the engine factors Δ itself, and U and V
// trade places on the way out).
TEST_P(OnDevice, CompressAsOnTheCpu) {
  REVMERGE_BACKEND_OR_SKIP(backend, GetParam());
  test::TempDir tmp;
  const i64 out = 48, in = 40;
  for (const auto layout : {test::Layout::linear, test::Layout::conv1d}) {
    const bool conv1d = layout == test::Layout::conv1d;
    SCOPED_TRACE(conv1d ? "conv1d" : "linear");
    const auto dir = tmp / (conv1d ? "conv1d" : "linear");
    std::mt19937 rng(9);
    std::normal_distribution<float> g;
    std::vector<double> sigma;  // a fine-tune's decaying spectrum
    for (i64 j = 0; j < in; ++j) sigma.push_back(std::pow(0.8, double(j)));
    std::vector<std::vector<float>> base(2, std::vector<float>(out * in)), ft = base;
    for (std::size_t l = 0; l < 2; ++l) {
      const auto delta = test::with_spectrum(in, out, sigma, 20 + unsigned(l));  // row-major out × in
      for (std::size_t i = 0; i < ft[l].size(); ++i) {
        base[l][i] = g(rng);
        ft[l][i] = base[l][i] + float(delta[i]);
      }
    }
    test::write_model(dir / "base", base, out, in, DType::F32, layout);
    test::write_model(dir / "ft", ft, out, in, DType::F32, layout);
    CompressOptions o;
    o.base = dir / "base";
    o.model = dir / "ft";
    o.rank = 8;
    o.device = Device::cpu;
    o.out = dir / "cpu";
    const auto on_cpu = compress_checkpoint(o);
    o.device = Device::cuda;
    o.out = dir / "gpu";
    const auto on_gpu = gpu() ? compress_checkpoint(o) : compress_checkpoint_on(o, backend.get());
    EXPECT_EQ(on_cpu.device, "cpu");
    EXPECT_EQ(on_gpu.device, backend->name());
    ASSERT_EQ(on_gpu.modules.size(), 2u);
    EXPECT_NEAR(on_gpu.relative_error, on_cpu.relative_error, 1e-5 * on_cpu.relative_error);
    const PeftAdapter a(dir / "cpu"), b(dir / "gpu");
    EXPECT_EQ(b.config().fan_in_fan_out, conv1d);
    for (std::size_t mi = 0; mi < 2; ++mi) {
      EXPECT_NEAR(on_gpu.modules[mi].delta_norm, on_cpu.modules[mi].delta_norm, 1e-12 * on_cpu.modules[mi].delta_norm);
      // The products B A agree with each other (the factors may differ by the signs of singular
      // vectors), and with the delta of the weights given.
      const auto& ma = a.modules()[mi];
      const auto& mb = b.modules()[mi];
      ASSERT_EQ(mb.out, out);
      ASSERT_EQ(mb.in, in);
      const auto aa = a.read_a(ma), ab = a.read_b(ma), ba = b.read_a(mb), bb = b.read_b(mb);
      double diff = 0, norm = 0, off = 0;
      for (i64 y = 0; y < out; ++y)
        for (i64 x = 0; x < in; ++x) {
          double p = 0, q = 0;
          for (i64 c = 0; c < 8; ++c) {
            p += double(ab[y * 8 + c]) * aa[c * in + x];
            q += double(bb[y * 8 + c]) * ba[c * in + x];
          }
          diff += (p - q) * (p - q);
          norm += p * p;
          const double d = double(ft[mi][y * in + x]) - base[mi][y * in + x];
          off += (q - d) * (q - d);
        }
      EXPECT_LT(std::sqrt(diff / norm), 1e-5) << ma.path;
      // Rank 8 of a spectrum 0.8^j keeps all but 0.8^16 / (1 − 0.64) of its energy.
      EXPECT_LT(std::sqrt(off / norm), 0.21) << mb.path;
    }
  }
}

// The full-model merge of GPT-2-shaped fine-tunes (weights stored in × out) with the factors
// put into the merge's stacks on the device: each task reverted to a full model holds what the
// CPU's bundle gives, as the files hold it.
TEST_P(OnDevice, Conv1dFullModelMergeAsOnTheCpu) {
  REVMERGE_BACKEND_OR_SKIP(backend, GetParam());
  test::TempDir tmp;
  const i64 out = 40, in = 32;
  std::mt19937 rng(6);
  std::normal_distribution<float> g;
  std::vector<std::vector<float>> base(2, std::vector<float>(out * in));
  for (auto& w : base)
    for (auto& x : w) x = g(rng);
  test::write_model(tmp / "base", base, out, in, DType::F32, test::Layout::conv1d);
  std::vector<double> sigma;
  for (i64 j = 0; j < 4; ++j) sigma.push_back(0.5 * std::pow(0.7, double(j)));
  RmmMergeOptions o;
  for (unsigned t = 0; t < 3; ++t) {
    auto ft = base;
    for (std::size_t l = 0; l < 2; ++l) {
      const auto delta = test::with_spectrum(in, out, sigma, 60 + 2 * t + unsigned(l));
      for (std::size_t i = 0; i < ft[l].size(); ++i) ft[l][i] += float(delta[i]);
    }
    const auto dir = tmp / ("ft" + std::to_string(t));
    test::write_model(dir, ft, out, in, DType::F32, test::Layout::conv1d);
    o.tasks.push_back({"ft" + std::to_string(t), dir});
  }
  o.basis = 2;
  o.dtype = DType::F32;
  o.device = Device::cpu;
  o.out = tmp / "cpu";
  const FullModelInputs inputs{tmp / "base", 4, 4, 2};
  merge_rmm_models(o, inputs);
  o.device = Device::cuda;
  o.out = tmp / "gpu";
  const auto on_gpu = gpu() ? merge_rmm_models(o, inputs) : merge_rmm_models_on(o, inputs, factory());
  EXPECT_TRUE(on_gpu.fan_in_fan_out);
  RevertOptions ro;
  ro.device = Device::cpu;
  for (const char* where : {"cpu", "gpu"})
    revert_task_full(Bundle(tmp / where), "ft1", tmp / "base", tmp / (std::string(where) + "-ft1"), ro, std::nullopt);
  const HfModel from_cpu(tmp / "cpu-ft1"), from_gpu(tmp / "gpu-ft1"), ft(tmp / "ft1");
  for (int l = 0; l < 2; ++l) {
    const auto name = test::weight_name(l, test::Layout::conv1d);
    const auto c = from_cpu.checkpoint().at(name).file->read_f64(name);
    const auto d = from_gpu.checkpoint().at(name).file->read_f64(name);
    const auto want = ft.checkpoint().at(name).file->read_f64(name);
    ASSERT_EQ(d.size(), want.size());
    for (std::size_t j = 0; j < d.size(); ++j) {
      ASSERT_NEAR(d[j], c[j], 1e-5) << name << " element " << j;
      ASSERT_NEAR(d[j], want[j], 1e-5) << name << " element " << j;  // rank 4 at P = n − 1: exact
    }
  }
}

// The streamed merge of full fine-tunes with the SVDs on the device (all tasks of a module in
// one batch, the factors put into the merge's stacks there) beside the same merge on the CPU:
// the same bundle up to rounding, as far as the merge's own errors show it.
TEST_P(OnDevice, FullModelMergeAsOnTheCpu) {
  REVMERGE_BACKEND_OR_SKIP(backend, GetParam());
  test::TempDir tmp;
  const i64 out = 40, in = 32;
  std::mt19937 rng(4);
  std::normal_distribution<float> g;
  std::vector<std::vector<float>> base(2, std::vector<float>(out * in));
  for (auto& w : base)
    for (auto& x : w) x = g(rng);
  test::write_model(tmp / "base", base, out, in, DType::BF16);
  std::vector<double> sigma;
  for (i64 j = 0; j < in; ++j) sigma.push_back(0.5 * std::pow(0.7, double(j)));
  RmmMergeOptions o;
  for (unsigned t = 0; t < 3; ++t) {
    auto ft = base;
    for (std::size_t l = 0; l < 2; ++l) {
      const auto delta = test::with_spectrum(in, out, sigma, 40 + 2 * t + unsigned(l));
      for (std::size_t i = 0; i < ft[l].size(); ++i) ft[l][i] += float(delta[i]);
    }
    const auto dir = tmp / ("ft" + std::to_string(t));
    test::write_model(dir, ft, out, in, DType::BF16);
    o.tasks.push_back({"ft" + std::to_string(t), dir});
  }
  o.basis = 2;
  o.device = Device::cpu;
  // Stored in f32: the two engines' factors differ by rounding, which BF16 storage of the bundle
  // (the models' dtype, the default) would magnify in the errors compared below.
  o.dtype = DType::F32;
  o.out = tmp / "cpu";
  const FullModelInputs inputs{tmp / "base", 6, 4, 2};
  const auto on_cpu = merge_rmm_models(o, inputs);
  o.device = Device::cuda;
  o.out = tmp / "gpu";
  PipelineStats stats;
  o.stats = &stats;
  const auto on_gpu =
      gpu() ? merge_rmm_models(o, inputs) : merge_rmm_models_on(o, inputs, factory());
  EXPECT_NE(on_gpu.backend, on_cpu.backend);
  // The factors are made in device memory: nothing goes through staging and the copy stream.
  EXPECT_EQ(stats.upload_seconds, 0.0);
  // The engine's batches are in the device memory plan.
  EXPECT_GT(stats.backend_peak_bytes, 0u);
  EXPECT_LE(stats.backend_peak_bytes, stats.planned_device_bytes);
  auto run = [&](RmmMergeOptions x) {
    return gpu() ? merge_rmm_models(x, inputs) : merge_rmm_models_on(x, inputs, factory());
  };
  // One module at a time: the same bytes.
  o.out = tmp / "gpu-sequential";
  o.sequential = true;
  run(o);
  o.sequential = false;
  EXPECT_EQ(test::read_bytes(tmp / "gpu-sequential" / kBundleTensorsName),
            test::read_bytes(tmp / "gpu" / kBundleTensorsName));
  // At the smallest budget the merge accepts (each refusal names what host, then device, need)
  // the tasks go through the engine one at a time: the same results, still within the plan.
  o.out = tmp / "tight";
  o.memory_budget = 4096;
  std::optional<BundleManifest> tight;
  for (int attempt = 0; attempt < 3 && !tight; ++attempt) try {
      tight = run(o);
    } catch (const usage_error& e) {
      o.memory_budget = test::budget_bytes_named(e.what());
    }
  ASSERT_TRUE(tight) << "no budget was accepted";
  EXPECT_LE(stats.backend_peak_bytes, stats.planned_device_bytes);
  EXPECT_LE(stats.planned_device_bytes, o.memory_budget);
  for (std::size_t m = 0; m < on_gpu.modules.size(); ++m)
    for (std::size_t t = 0; t < 3; ++t)
      EXPECT_NEAR(tight->modules[m].delta_error[t], on_gpu.modules[m].delta_error[t],
                  1e-9 * on_gpu.modules[m].delta_error[t])
          << on_gpu.modules[m].path << ", task " << t;
  ASSERT_EQ(on_gpu.modules.size(), on_cpu.modules.size());
  for (std::size_t m = 0; m < on_cpu.modules.size(); ++m)
    for (std::size_t t = 0; t < 3; ++t)
      EXPECT_NEAR(on_gpu.modules[m].delta_error[t], on_cpu.modules[m].delta_error[t],
                  1e-4 * on_cpu.modules[m].delta_error[t] + 1e-7)
          << on_cpu.modules[m].path << ", task " << t;
}

// The device memory the merge plans for a module's batch covers every module as the engine runs
// it: an MLP's up and down projections have one size but sketch different sides, and a weight
// stored in × out (GPT-2) is run the other way round.
TEST(FullModelPlan, DeviceBatchesCoverEveryModuleAsTheEngineRunsIt) {
  test::TempDir tmp;
  auto be = test::make_deferred_backend();
  BatchedPtSvd engine(*be);
  const i64 hidden = 20, inter = 100;
  for (const auto layout : {test::Layout::linear, test::Layout::conv1d}) {
    const bool conv1d = layout == test::Layout::conv1d;
    SCOPED_TRACE(conv1d ? "conv1d" : "linear");
    const auto dir = tmp / (conv1d ? "conv1d" : "linear");
    std::filesystem::create_directories(dir / "base");
    test::write_bytes(dir / "base" / "config.json", conv1d ? "{\"model_type\": \"gpt2\"}" : "{\"model_type\": \"llama\"}");
    // down_proj (hidden × inter) sorts first; up_proj (inter × hidden) sketches the longer side.
    std::vector<float> zeros(hidden * inter, 0.0f);
    const auto bytes = std::as_bytes(std::span(zeros));
    std::vector<TensorData> tensors;
    for (const auto& [name, out, in] : {std::tuple{"mlp.down_proj", hidden, inter}, std::tuple{"mlp.up_proj", inter, hidden}})
      tensors.push_back({{"model.layers.0." + std::string(name) + ".weight", DType::F32,
                          conv1d ? std::vector<i64>{in, out} : std::vector<i64>{out, in}}, bytes});
    write_safetensors(dir / "base" / "model.safetensors", tensors);
    const FullModelInputs inputs{dir / "base", 8, 4, 1};
    auto set = open_full_model_set({{"a", dir / "base"}, {"b", dir / "base"}}, inputs);
    attach_device_svd(*set, engine);
    for (i64 batch = 1; batch <= 2; ++batch)
      for (const auto& w : set->base->linears()) {
        const auto m = w.stored_in_by_out ? w.out : w.in, n = w.stored_in_by_out ? w.in : w.out;
        EXPECT_GE(set->source.device_load_bytes(batch),
                  engine.work_bytes(batch, m, n, pt_svd_options(w, 8, 4, 1, 0), 4))
            << w.path << ", batch " << batch;
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, OnDevice, ::testing::Values("deferred", "cuda"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace revmerge
