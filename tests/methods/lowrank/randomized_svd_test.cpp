// The randomized SVD against matrices built with a known spectrum (so the best rank-k error is
// known without any SVD): within 1.05 × Eckart–Young with power iterations, within the
// Halko–Martinsson–Tropp expectation bound without, exact on exactly low-rank matrices; and
// `revmerge compress` end to end (f32 and BF16 models, energy ranks, bad inputs).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "methods/lowrank/lowrank_fixtures.hpp"
#include "methods/lowrank/randomized_svd.hpp"
#include "revmerge/bundle.hpp"
#include "revmerge/compress.hpp"
#include "revmerge/hf_model.hpp"
#include "revmerge/mapped_file.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/safetensors.hpp"
#include "revmerge/store.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;
using test::error_sq;
using test::tail;
using test::with_spectrum;
using test::Layout;
using test::weight_name;
using test::write_model;

TEST(RandomizedSvd, DecayingSpectrumWithin105OfTheBest) {
  const i64 m = 120, n = 80, k = 10;
  for (const auto kind : {0, 1}) {
    std::vector<double> sigma;
    for (i64 j = 0; j < 80; ++j)
      sigma.push_back(kind == 0 ? std::exp(-0.15 * double(j)) : 1.0 / double((j + 1) * (j + 1)) + 1e-3);
    const auto a = with_spectrum(m, n, sigma, 7 + kind);
    const auto s = randomized_svd(a, m, n, {k, 8, 2, 3, 4});
    const double got = error_sq(a, s, m, n), best = tail(sigma, k);
    EXPECT_LE(std::sqrt(got), 1.05 * std::sqrt(best)) << "spectrum " << kind << " (seed 7)";
    double total = 0;
    for (const auto x : a) total += x * x;
    double kept = 0;
    for (const auto x : s.s) kept += x * x;
    EXPECT_NEAR(got, total - kept, 1e-9 * total) << "the reported error is the true one";
    for (i64 c = 0; c < k; ++c) EXPECT_NEAR(s.s[c], sigma[c], 0.02 * sigma[0]) << c;
  }
}

TEST(RandomizedSvd, WithinTheHalkoMartinssonTroppBound) {
  // E ‖A − QQᵀA‖_F ≤ (1 + k / (p − 1))^{1/2} (Σ_{j>k} σ_j²)^{1/2} without power iterations
  // (HMT 2011, Theorem 10.5); the mean over 20 sketches must meet it.
  const i64 m = 100, n = 60, k = 8, p = 6;
  std::vector<double> sigma;
  for (i64 j = 0; j < 60; ++j) sigma.push_back(std::pow(0.85, double(j)));
  const auto a = with_spectrum(m, n, sigma, 11);
  double total = 0;
  for (const auto x : a) total += x * x;
  double mean = 0;
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    const auto s = randomized_svd(a, m, n, {k, p, 0, seed, 1});
    mean += std::sqrt(std::max(total - s.captured, 0.0)) / 20;
  }
  const double bound = std::sqrt(1.0 + double(k) / double(p - 1)) * std::sqrt(tail(sigma, k));
  RecordProperty("mean_projection_error_over_bound", std::to_string(mean / bound));
  EXPECT_LE(mean, bound);
}

TEST(RandomizedSvd, ExactlyLowRankComesBackExactly) {
  const auto a = with_spectrum(50, 70, {5, 3, 2, 1, 0.5}, 3);
  const auto s = randomized_svd(a, 50, 70, {8, 4, 1, 0, 0});
  double total = 0;
  for (const auto x : a) total += x * x;
  EXPECT_LE(error_sq(a, s, 50, 70), 1e-20 * total);
}

// CholeskyQR2 itself: orthonormal to ε and X = QR up to κ(X) = 10⁷ (where one round alone
// leaves Q ~10⁻² from orthonormal), and a refusal where it cannot hold.
TEST(RandomizedSvd, CholeskyQr2HoldsToTenToTheSevenAndRefusesBeyond) {
  const i64 rows = 400, cols = 24;
  for (const double kappa : {1.0, 1e4, 1e7, 3e8, 1e12}) {
    std::vector<double> sigma;
    for (i64 j = 0; j < cols; ++j) sigma.push_back(std::pow(kappa, -double(j) / (cols - 1)));
    const auto x = with_spectrum(rows, cols, sigma, 9);
    auto q = x;
    std::vector<double> r(static_cast<std::size_t>(cols * cols)), g, first;
    const bool held = cholesky_qr2(q.data(), rows, cols, r.data(), g, first);
    if (kappa > 1e8) {  // at 3·10⁸ Cholesky still succeeds: the check on R₂ refuses
      EXPECT_FALSE(held) << "κ " << kappa;
      continue;
    }
    ASSERT_TRUE(held) << "κ " << kappa;
    double worst_orth = 0, worst_fit = 0;
    for (i64 c = 0; c < cols; ++c)
      for (i64 d = 0; d < cols; ++d) {
        double dot = 0;
        for (i64 i = 0; i < rows; ++i) dot += q[c * rows + i] * q[d * rows + i];
        worst_orth = std::max(worst_orth, std::abs(dot - (c == d ? 1.0 : 0.0)));
      }
    for (i64 j = 0; j < cols; ++j)
      for (i64 i = 0; i < rows; ++i) {
        double qr = 0;
        for (i64 c = 0; c <= j; ++c) qr += q[c * rows + i] * r[j * cols + c];
        worst_fit = std::max(worst_fit, std::abs(qr - x[j * rows + i]));
      }
    EXPECT_LT(worst_orth, 1e-13) << "κ " << kappa;
    EXPECT_LT(worst_fit, 1e-13) << "κ " << kappa;
  }
}

// B's SVD goes through CholeskyQR2 where the projection is well conditioned and through
// Householder / LAPACK where it is not (κ past ~10⁸, or rank-deficient): every case must give
// orthonormal factors, the true singular values and the error it reports.
TEST(RandomizedSvd, OrthonormalFactorsAndTheExactErrorAtAnyConditioning) {
  const i64 m = 300, n = 200, k = 12, l = 20;
  for (const double floor : {1e-2, 1e-6, 1e-9, 1e-12, 0.0}) {  // κ(B) = 1 / floor
    std::vector<double> sigma;
    for (i64 j = 0; j < n; ++j) sigma.push_back(j < l ? std::pow(floor > 0 ? floor : 1e-3, double(j) / (l - 1)) : 0.0);
    if (floor == 0.0) std::fill(sigma.begin() + 6, sigma.end(), 0.0);  // rank 6 < l
    const auto a = with_spectrum(m, n, sigma, 5);
    const auto s = randomized_svd(a, m, n, {k, l - k, 2, 1, 2});
    double total = 0, kept = 0;
    for (const auto x : a) total += x * x;
    for (const auto x : s.s) kept += x * x;
    EXPECT_NEAR(error_sq(a, s, m, n), total - kept, 1e-12 * total) << "floor " << floor;
    for (i64 c = 0; c < k; ++c) {
      EXPECT_NEAR(s.s[c], sigma[c], 1e-10 * sigma[0]) << "floor " << floor << ", σ" << c;
      for (i64 d = 0; d <= c; ++d) {
        double uu = 0, vv = 0;
        for (i64 i = 0; i < m; ++i) uu += s.u[c * m + i] * s.u[d * m + i];
        for (i64 j = 0; j < n; ++j) vv += s.v[c * n + j] * s.v[d * n + j];
        const double want = c == d && s.s[c] > 0 ? 1.0 : 0.0;
        if (s.s[c] > 0) {  // a zero singular value's vectors are arbitrary
          EXPECT_NEAR(uu, want, 1e-12) << "floor " << floor << ", u" << c << "·u" << d;
          EXPECT_NEAR(vv, want, 1e-12) << "floor " << floor << ", v" << c << "·v" << d;
        }
      }
    }
  }
}

// Exactly low-rank deltas come back to rounding, for a llama's out × in weights and for GPT-2's
// Conv1D ones (stored in × out): there the adapter says fan_in_fan_out, as PEFT's do, and its
// factors are still B out × r and A r × in, of Δ = W_ftᵀ − W_baseᵀ (PEFT adds (BA)ᵀ to the file's
// weight).
TEST(Compress, RecoversExactlyLowRankDeltasAndReportsTheError) {
  test::TempDir tmp;
  const i64 out = 24, in = 16;
  for (const auto layout : {Layout::linear, Layout::conv1d}) {
    const bool conv1d = layout == Layout::conv1d;
    SCOPED_TRACE(conv1d ? "conv1d" : "linear");
    std::mt19937 rng(5);
    std::normal_distribution<float> g;
    std::vector<std::vector<float>> base(2, std::vector<float>(out * in)), ft = base;
    std::vector<std::vector<double>> delta(2, std::vector<double>(out * in, 0.0));
    for (int l = 0; l < 2; ++l) {
      for (auto& x : base[l]) x = g(rng);
      // Δ of rank 3: a sum of three outer products of small integers (exact in f32).
      for (int c = 0; c < 3; ++c) {
        std::vector<int> u(out), v(in);
        for (auto& x : u) x = int(rng() % 5) - 2;
        for (auto& x : v) x = int(rng() % 5) - 2;
        for (i64 o = 0; o < out; ++o)
          for (i64 i = 0; i < in; ++i) delta[l][o * in + i] += 0.25 * u[o] * v[i];
      }
      for (i64 j = 0; j < out * in; ++j) ft[l][j] = base[l][j] + float(delta[l][j]);
    }
    const auto dir = tmp / (conv1d ? "conv1d" : "linear");
    write_model(dir / "base", base, out, in, DType::F32, layout);
    write_model(dir / "ft", ft, out, in, DType::F32, layout);
    CompressOptions o;
    o.base = dir / "base";
    o.model = dir / "ft";
    o.rank = 4;
    o.out = dir / "adapter";
    const auto r = compress_checkpoint(o);
    EXPECT_LT(r.relative_error, 1e-5);
    const PeftAdapter a(o.out);
    EXPECT_EQ(a.config().fan_in_fan_out, conv1d);
    ASSERT_EQ(a.modules().size(), 2u);
    for (const auto& m : a.modules()) {
      const int l = m.layer;
      ASSERT_EQ(m.out, out);
      ASSERT_EQ(m.in, in);
      const auto fa = a.read_a(m), fb = a.read_b(m);
      for (i64 y = 0; y < out; ++y)
        for (i64 x = 0; x < in; ++x) {
          double v = 0;
          for (i64 k = 0; k < m.rank; ++k) v += m.scale * double(fb[y * m.rank + k]) * fa[k * in + x];
          // The fine-tune holds base + Δ rounded to f32; compare with what the files hold.
          ASSERT_NEAR(v, double(ft[l][y * in + x]) - double(base[l][y * in + x]), 1e-5);
        }
    }
  }
}

TEST(Compress, RmmOverFullFineTunesRevertsToEachFineTune) {
  // Three fine-tunes with rank-2 deltas: compressed to rank 3 and merged with P = n − 1, each
  // task reverted as a full model holds its fine-tune's weights — also where the models store
  // them in × out (GPT-2's Conv1D): the bundle then says fan_in_fan_out, as its adapters would.
  test::TempDir tmp;
  const i64 out = 12, in = 10;
  for (const auto layout : {Layout::linear, Layout::conv1d}) {
    const bool conv1d = layout == Layout::conv1d;
    SCOPED_TRACE(conv1d ? "conv1d" : "linear");
    const auto dir = tmp / (conv1d ? "conv1d" : "linear");
    std::mt19937 rng(21);
    std::normal_distribution<float> g;
    std::vector<std::vector<float>> base(2, std::vector<float>(out * in));
    for (auto& w : base)
      for (auto& x : w) x = g(rng);
    write_model(dir / "base", base, out, in, DType::F32, layout);
    std::vector<std::vector<std::vector<float>>> fts;
    RmmMergeOptions o;
    for (int t = 0; t < 3; ++t) {
      auto ft = base;
      for (auto& w : ft)
        for (int c = 0; c < 2; ++c) {
          std::vector<float> u(out), v(in);
          for (auto& x : u) x = g(rng);
          for (auto& x : v) x = g(rng);
          for (i64 y = 0; y < out; ++y)
            for (i64 x = 0; x < in; ++x) w[y * in + x] += 0.1f * u[y] * v[x];
        }
      const auto ft_dir = dir / ("ft" + std::to_string(t));
      write_model(ft_dir, ft, out, in, DType::F32, layout);
      fts.push_back(ft);
      o.tasks.push_back({"ft" + std::to_string(t), ft_dir});
    }
    o.basis = 2;
    o.out = dir / "bundle";
    o.device = Device::cpu;
    const auto manifest = merge_rmm_models(o, {dir / "base", 3});
    EXPECT_EQ(manifest.tasks[1].source, (dir / "ft1").string());
    EXPECT_EQ(manifest.fan_in_fan_out, conv1d);
    const Bundle bundle(o.out);
    EXPECT_EQ(bundle.manifest().fan_in_fan_out, conv1d);
    for (int t = 0; t < 3; ++t) {
      RevertOptions ro;
      ro.device = Device::cpu;
      const auto model_dir = dir / ("model" + std::to_string(t));
      revert_task_full(bundle, "ft" + std::to_string(t), dir / "base", model_dir, ro, std::nullopt);
      const HfModel m(model_dir);
      for (int l = 0; l < 2; ++l) {
        const auto name = weight_name(l, layout);
        const auto w = m.checkpoint().at(name).file->read_f64(name);  // as the file holds it
        for (i64 y = 0; y < out; ++y)
          for (i64 x = 0; x < in; ++x)
            ASSERT_NEAR(w[conv1d ? x * out + y : y * in + x], fts[t][l][y * in + x], 1e-5) << name;
      }
    }
    int leftovers = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir))
      leftovers += e.path().filename().string().find("compress") != std::string::npos;
    EXPECT_EQ(leftovers, 0) << "the temporary adapters are removed";
  }
}

// merge --method rmm over full fine-tunes compresses each module's deltas as the pipeline reads
// them; the bundle must be the one `revmerge compress` of each fine-tune and an RMM merge of
// those adapters give — the same factors, bit for bit. bf16 models; a fourth task of another
// shape is refused by folder and tensor before anything is written.
// --method rank / auto over full fine-tunes: the bundle is the one storing the adapters
// `compress` writes gives, byte for byte; the manifest names the model folders, the default
// dtype is the base's, nothing temporary is left, and an existing output is refused before
// anything is compressed.
TEST(Compress, StoreOverFullFineTunesIsCompressThenStoreBitwise) {
  test::TempDir tmp;
  const i64 out = 12, in = 10;
  std::mt19937 rng(33);
  std::normal_distribution<float> g;
  std::vector<std::vector<float>> base(2, std::vector<float>(out * in));
  for (auto& w : base)
    for (auto& x : w) x = g(rng);
  write_model(tmp / "base", base, out, in, DType::BF16);
  StoreMergeOptions direct, two_step;
  for (int t = 0; t < 3; ++t) {
    auto ft = base;
    for (auto& w : ft)
      for (int c = 0; c < 3; ++c) {
        std::vector<float> u(out), v(in);
        for (auto& x : u) x = g(rng);
        for (auto& x : v) x = g(rng);
        for (i64 y = 0; y < out; ++y)
          for (i64 x = 0; x < in; ++x) w[y * in + x] += (0.2f - 0.05f * float(c)) * u[y] * v[x];
      }
    const std::string name = "ft" + std::to_string(t);
    write_model(tmp / name, ft, out, in, DType::BF16);
    direct.tasks.push_back({name, tmp / name});
    CompressOptions c;
    c.base = tmp / "base";
    c.model = tmp / name;
    c.rank = 4;
    c.out = tmp / ("adapter-" + name);
    c.device = Device::cpu;  // as the stores below: a GPU's SVD may pick other signs
    compress_checkpoint(c);
    two_step.tasks.push_back({name, c.out});
  }
  for (const auto method : {StoreMethod::rank, StoreMethod::automatic}) {
    SCOPED_TRACE(method == StoreMethod::rank ? "rank" : "auto");
    for (auto* o : {&direct, &two_step}) {
      o->method = method;
      o->storage.fraction = 0.6;
      o->threads = 2;
      o->device = Device::cpu;
      o->overwrite = true;
    }
    direct.full_models = FullModelInputs{tmp / "base", 4};
    direct.out = tmp / "direct";
    two_step.out = tmp / "two-step";
    two_step.dtype = DType::BF16;  // what the direct path takes from the base
    const auto manifest = merge_store(direct);
    merge_store(two_step);
    EXPECT_EQ(test::read_bytes(tmp / "direct" / "bundle.safetensors"),
              test::read_bytes(tmp / "two-step" / "bundle.safetensors"));
    EXPECT_EQ(manifest.tasks[2].source, (tmp / "ft2").string());
    std::size_t entries = 0;
    for (const auto& e : std::filesystem::directory_iterator(tmp.path())) entries += e.path().filename().string().starts_with("direct");
    EXPECT_EQ(entries, 1u) << "a temporary folder was left beside the output";
  }
  direct.overwrite = false;
  EXPECT_THROW(merge_store(direct), io_error);
}

TEST(Compress, StreamedFullModelMergeIsCompressThenMergeBitwise) {
  test::TempDir tmp;
  const i64 out = 24, in = 18;
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  std::vector<std::vector<float>> base(2, std::vector<float>(out * in));
  for (auto& w : base)
    for (auto& x : w) x = g(rng);
  write_model(tmp / "base", base, out, in, DType::BF16);
  RmmMergeOptions o;
  for (int t = 0; t < 3; ++t) {
    auto ft = base;
    for (auto& w : ft)
      for (auto& x : w) x += 0.05f * g(rng);
    const auto dir = tmp / ("ft" + std::to_string(t));
    write_model(dir, ft, out, in, DType::BF16);
    o.tasks.push_back({"ft" + std::to_string(t), dir});
  }
  o.basis = 2;
  o.device = Device::cpu;
  o.dtype = DType::F32;  // as stored from the f32 adapters compress writes (BF16 would follow the models)
  o.out = tmp / "streamed";
  const FullModelInputs inputs{tmp / "base", 5, 4, 1};
  const auto streamed = merge_rmm_models(o, inputs);

  auto through_adapters = o;
  through_adapters.out = tmp / "adapters-bundle";
  for (auto& t : through_adapters.tasks) {
    CompressOptions c;
    c.base = inputs.base;
    c.model = t.adapter;
    c.rank = inputs.rank;
    c.oversampling = inputs.oversampling;
    c.power_iterations = inputs.power_iterations;
    c.out = tmp / ("adapter-" + t.name);
    c.device = Device::cpu;  // the merge above ran on the CPU (a GPU's f64 SVD rounds otherwise)
    compress_checkpoint(c);
    t.origin = t.adapter;
    t.adapter = c.out;
  }
  const auto merged = merge_rmm(through_adapters);
  const MappedFile x(o.out / kBundleTensorsName), y(through_adapters.out / kBundleTensorsName);
  ASSERT_EQ(x.bytes().size(), y.bytes().size());
  EXPECT_TRUE(std::equal(x.bytes().begin(), x.bytes().end(), y.bytes().begin()));
  ASSERT_EQ(streamed.modules.size(), 2u);
  for (std::size_t m = 0; m < 2; ++m) {
    EXPECT_EQ(streamed.modules[m].task_ranks, (std::vector<i64>{5, 5, 5}));
    EXPECT_EQ(streamed.modules[m].delta_error, merged.modules[m].delta_error);
  }
  EXPECT_EQ(streamed.tasks[2].source, (tmp / "ft2").string());
  EXPECT_EQ(streamed.tasks[2].base_model_name_or_path, merged.tasks[2].base_model_name_or_path);

  write_model(tmp / "other", {std::vector<float>(16 * in), std::vector<float>(16 * in)}, 16, in, DType::F32);
  o.tasks.push_back({"other", tmp / "other"});
  o.basis = 3;
  o.out = tmp / "never";
  try {
    merge_rmm_models(o, inputs);
    FAIL() << "accepted a fine-tune of another shape";
  } catch (const shape_error& e) {
    EXPECT_NE(std::string(e.what()).find((tmp / "other").string() +
                                         ": tensor 'model.layers.0.self_attn.q_proj.weight' is not 24 × 18"),
              std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(o.out));
}

// A non-finite weight (or difference) in a fine-tune is refused by folder, tensor and element,
// by compress and by the streamed full-model merge alike, and nothing is written.
TEST(Compress, NonFiniteWeightsAreRefusedByFolderTensorAndElement) {
  test::TempDir tmp;
  const i64 out = 8, in = 6;
  std::vector<std::vector<float>> base(2, std::vector<float>(out * in, 0.5f)), ft = base;
  ft[1][13] = INFINITY;
  write_model(tmp / "base", base, out, in, DType::F32);
  write_model(tmp / "ft", ft, out, in, DType::F32);
  write_model(tmp / "ft-ok", base, out, in, DType::F32);
  const std::string where = (tmp / "ft").string() +
                            ": tensor 'model.layers.1.self_attn.q_proj.weight' holds a non-finite "
                            "value (or its difference to the base is) at element 13";
  CompressOptions c;
  c.base = tmp / "base";
  c.model = tmp / "ft";
  c.rank = 2;
  c.out = tmp / "adapter";
  try {
    compress_checkpoint(c);
    FAIL() << "compressed an infinite weight";
  } catch (const format_error& e) {
    EXPECT_EQ(std::string(e.what()), where);
  }
  EXPECT_FALSE(std::filesystem::exists(c.out));
  RmmMergeOptions o;
  o.tasks = {{"ok", tmp / "ft-ok"}, {"bad", tmp / "ft"}};
  o.basis = 1;
  o.device = Device::cpu;
  o.out = tmp / "bundle";
  try {
    merge_rmm_models(o, {tmp / "base", 2});
    FAIL() << "merged an infinite weight";
  } catch (const format_error& e) {
    EXPECT_EQ(std::string(e.what()), where);
  }
  EXPECT_FALSE(std::filesystem::exists(o.out));
}

TEST(Compress, Bf16ModelsAndEnergyRanks) {
  test::TempDir tmp;
  const i64 out = 32, in = 20;
  std::mt19937 rng(9);
  std::normal_distribution<float> g;
  std::vector<std::vector<float>> base(2, std::vector<float>(out * in)), ft = base;
  for (int l = 0; l < 2; ++l)
    for (i64 j = 0; j < out * in; ++j) {
      base[l][j] = g(rng);
      ft[l][j] = base[l][j] + 0.05f * g(rng) * (l + 1);
    }
  write_model(tmp / "base", base, out, in, DType::BF16);
  write_model(tmp / "ft", ft, out, in, DType::BF16);
  CompressOptions o;
  o.base = tmp / "base";
  o.model = tmp / "ft";
  o.rank = 12;
  o.energy = 0.5;
  o.out = tmp / "adapter";
  const auto r = compress_checkpoint(o);
  for (const auto& m : r.modules) {
    EXPECT_LE(m.rank, 12);
    EXPECT_GE(1 - m.relative_error * m.relative_error, 0.5 - 1e-9) << m.path << " keeps the energy";
  }
  const PeftAdapter a(o.out);
  for (const auto& m : a.modules()) EXPECT_DOUBLE_EQ(m.scale, 1.0);
  // Wrong shapes are refused by name, and nothing is written.
  write_model(tmp / "other", {std::vector<float>(16 * 20), std::vector<float>(16 * 20)}, 16, 20, DType::F32);
  o.model = tmp / "other";
  o.out = tmp / "never";
  try {
    compress_checkpoint(o);
    FAIL() << "accepted a model of another shape";
  } catch (const shape_error& e) {
    EXPECT_NE(std::string(e.what()).find("'model.layers.0.self_attn.q_proj.weight' is not 32 × 20"),
              std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(o.out));
}

}  // namespace
}  // namespace revmerge
