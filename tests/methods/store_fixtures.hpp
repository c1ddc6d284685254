#pragma once
// The adapter families the budgeted store's tests merge (tests/methods/store_*_test.cpp,
// resident_bundle_test.cpp): tasks of four modules whose factors share an initialisation, a
// row basis or a column basis by construction, the store's options, and the dense errors every
// manifest's reported errors are checked against.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "methods/adapter_writer.hpp"
#include "revmerge/bundle.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/store.hpp"
#include "test_util.hpp"

namespace revmerge::store_fixtures {

using test::ModuleSpec;
using i64 = std::int64_t;

constexpr int kRank = 16;
constexpr i64 kTasks = 4;

// q_proj modules like trained adapters (each task's delta has a fast-decaying spectrum, its
// own directions); v_proj modules like LoRA tasks from one initialisation (A moved a little
// from a shared init, B mostly shared, the shared product's spectrum flat): the first suit a
// truncation, the second RMM.
inline const std::vector<ModuleSpec> kModules = {{"model.layers.0.self_attn.q_proj", kRank, 32, 24},
                                          {"model.layers.0.self_attn.v_proj", kRank, 32, 20},
                                          {"model.layers.1.self_attn.q_proj", kRank, 32, 24},
                                          {"model.layers.1.self_attn.v_proj", kRank, 32, 20}};

inline bool shared_init(const ModuleSpec& m) { return m.path.find("v_proj") != std::string::npos; }

// `count` orthogonal vectors of length `len` (Gram–Schmidt on Gaussians), each of norm √len,
// as rows of a count × len matrix.
inline std::vector<float> orthogonal_rows(i64 count, i64 len, std::mt19937& rng) {
  std::normal_distribution<double> g;
  std::vector<double> q(static_cast<std::size_t>(count * len));
  for (i64 r = 0; r < count; ++r) {
    double* v = &q[r * len];
    for (i64 i = 0; i < len; ++i) v[i] = g(rng);
    for (i64 p = 0; p < r; ++p) {
      double d = 0;
      for (i64 i = 0; i < len; ++i) d += v[i] * q[p * len + i];
      for (i64 i = 0; i < len; ++i) v[i] -= d * q[p * len + i];
    }
    double n = 0;
    for (i64 i = 0; i < len; ++i) n += v[i] * v[i];
    for (i64 i = 0; i < len; ++i) v[i] /= std::sqrt(n);
  }
  std::vector<float> out;
  for (const double x : q) out.push_back(static_cast<float>(x * std::sqrt(double(len))));
  return out;
}

inline std::vector<TaskSource> write_family(const std::filesystem::path& tmp, unsigned seed = 7) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  std::map<std::string, std::vector<float>> a0, b0;
  for (const auto& m : kModules) {
    a0[m.path] = orthogonal_rows(m.rank, m.in, rng);
    const auto bt = orthogonal_rows(m.rank, m.out, rng);  // B0's columns
    for (i64 o = 0; o < m.out; ++o)
      for (i64 k = 0; k < m.rank; ++k) b0[m.path].push_back(bt[k * m.out + o]);
  }
  std::vector<TaskSource> tasks;
  for (i64 t = 0; t < kTasks; ++t) {
    std::map<std::string, std::vector<float>> a, b;
    for (const auto& m : kModules) {
      auto& at = a[m.path];
      auto& bt = b[m.path];
      for (i64 i = 0; i < m.rank * m.in; ++i)
        at.push_back(shared_init(m) ? a0[m.path][i] + 0.15f * g(rng) : g(rng));
      for (i64 o = 0; o < m.out; ++o)
        for (i64 k = 0; k < m.rank; ++k)
          bt.push_back(shared_init(m) ? b0[m.path][o * m.rank + k] + 0.2f * g(rng)
                                      : float(3 * std::pow(0.45, double(k))) * g(rng));
    }
    const auto dir = tmp / ("task" + std::to_string(t));
    test::write_adapter_factors(dir, kRank, kModules, a, b);
    tasks.push_back({"task" + std::to_string(t), dir});
  }
  return tasks;
}

inline StoreMergeOptions store_options(const std::vector<TaskSource>& tasks, StoreMethod method,
                                const std::filesystem::path& out) {
  StoreMergeOptions o;
  o.tasks = tasks;
  o.method = method;
  o.out = out;
  o.device = Device::cpu;
  return o;
}

// Mean over tasks of the squared relative delta error over all modules: the allocation's
// objective, read from a manifest.
inline double objective(const BundleManifest& m) {
  double sum = 0;
  for (std::size_t t = 0; t < m.tasks.size(); ++t) {
    double num = 0, den = 0;
    for (const auto& mod : m.modules) {
      const double e = mod.delta_error[t] * mod.delta_norm[t];
      num += e * e;
      den += mod.delta_norm[t] * mod.delta_norm[t];
    }
    sum += num / den;
  }
  return sum / double(m.tasks.size());
}

inline double stored_numbers(const BundleManifest& m) {
  double s = 0;
  for (const auto& mod : m.modules) s += double(mod.stored_numbers(static_cast<i64>(m.tasks.size())));
  return s;
}

inline double all_numbers(const BundleManifest& m) {
  double s = 0;
  for (const auto& mod : m.modules)
    for (const auto r : mod.task_ranks) s += double(r) * double(mod.in + mod.out);
  return s;
}

// The dense delta of task t, module `spec`, from its adapter folder (scale 1).
inline std::vector<double> task_delta(const std::filesystem::path& dir, const ModuleSpec& spec) {
  const PeftAdapter ad(dir);
  const auto* m = ad.find(spec.path);
  return test::dense_delta(ad.read_a(*m), ad.read_b(*m), m->rank, spec.in, spec.out, m->scale);
}

// Task t's factors of an rmm module as RMM reads them, f64: A (rank × in) and B with the scale
// folded in (out × rank), zero-padded to the module's rank.
inline std::pair<std::vector<double>, std::vector<double>> padded_factors(const std::filesystem::path& dir,
                                                                   const BundleModule& mod) {
  const PeftAdapter ad(dir);
  const auto* m = ad.find(mod.path);
  const auto a = ad.read_a(*m), b = ad.read_b(*m);
  std::vector<double> pa(static_cast<std::size_t>(mod.rank * mod.in), 0.0), pb(static_cast<std::size_t>(mod.out * mod.rank), 0.0);
  for (i64 k = 0; k < m->rank; ++k)
    for (i64 j = 0; j < mod.in; ++j) pa[k * mod.in + j] = a[k * mod.in + j];
  for (i64 o = 0; o < mod.out; ++o)
    for (i64 k = 0; k < m->rank; ++k) pb[o * mod.rank + k] = m->scale * double(b[o * m->rank + k]);
  return {pa, pb};
}

// Every module and task: the reverted dense delta's error against the task's own equals the
// manifest's, and so do an rmm module's factor errors; returns the largest relative error.
inline int rmm_checked = 0;  // rmm modules' task factors check_errors_are_dense_errors compared

inline double check_errors_are_dense_errors(const std::filesystem::path& dir, const std::vector<TaskSource>& tasks) {
  const Bundle bundle(dir);
  const auto& man = bundle.manifest();
  double worst = 0;
  for (std::size_t mi = 0; mi < man.modules.size(); ++mi) {
    const auto& mod = man.modules[mi];
    const ModuleSpec spec{mod.path, mod.rank, mod.in, mod.out};
    for (i64 t = 0; t < kTasks; ++t) {
      const auto rm = revert_module(bundle, mi, t, Device::cpu);
      const auto got = test::dense_delta(rm.a, rm.b, mod.rank, mod.in, mod.out, 1.0);
      const auto want = task_delta(tasks[t].adapter, spec);
      const double e = test::relative_difference(got, want);
      EXPECT_NEAR(e, mod.delta_error[t], 1e-6 + 1e-5 * e) << mod.path << " task " << t;
      worst = std::max(worst, e);
      // (Tasks added later have their own truncations: an rmm module's factor errors cover the
      // tasks its representation holds.)
      if (mod.representation != Representation::rmm || t >= i64(mod.factor_error_a.size())) continue;
      ++rmm_checked;
      const auto [a, b] = padded_factors(tasks[t].adapter, mod);
      const double ea = test::relative_difference(std::vector<double>(rm.a.begin(), rm.a.end()), a),
                   eb = test::relative_difference(std::vector<double>(rm.b.begin(), rm.b.end()), b);
      EXPECT_NEAR(ea, mod.factor_error_a[t], 1e-6 + 1e-5 * ea) << mod.path << " task " << t;
      EXPECT_NEAR(eb, mod.factor_error_b[t], 1e-6 + 1e-5 * eb) << mod.path << " task " << t;
    }
  }
  return worst;
}

// Tasks that share their A almost exactly and differ in B.
inline std::vector<TaskSource> write_shared_a_family(const std::filesystem::path& tmp) {
  std::mt19937 rng(11);
  std::normal_distribution<float> g;
  std::map<std::string, std::vector<float>> a0;
  for (const auto& m : kModules) a0[m.path] = orthogonal_rows(m.rank, m.in, rng);
  std::vector<TaskSource> tasks;
  for (i64 t = 0; t < kTasks; ++t) {
    std::map<std::string, std::vector<float>> a, b;
    for (const auto& m : kModules) {
      for (const float v : a0[m.path]) a[m.path].push_back(v + 0.001f * g(rng));
      const auto bt = orthogonal_rows(m.rank, m.out, rng);
      for (i64 o = 0; o < m.out; ++o)
        for (i64 k = 0; k < m.rank; ++k) b[m.path].push_back(bt[k * m.out + o]);
    }
    const auto dir = tmp / ("task" + std::to_string(t));
    test::write_adapter_factors(dir, kRank, kModules, a, b);
    tasks.push_back({"task" + std::to_string(t), dir});
  }
  return tasks;
}

// Tasks whose A's share one initialisation and whose B's share half their columns (rank 8,
// 96 → 80): their row spaces lie in A0's 8 directions, their column spaces in 4 + 4·4 = 20.
inline const std::vector<ModuleSpec> kWideModules = {{"model.layers.0.self_attn.q_proj", 8, 96, 80},
                                              {"model.layers.0.self_attn.v_proj", 8, 96, 80}};

inline std::vector<TaskSource> write_shared_columns_family(const std::filesystem::path& tmp) {
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  std::map<std::string, std::vector<float>> a0, b0;
  for (const auto& m : kWideModules) {
    a0[m.path] = orthogonal_rows(m.rank, m.in, rng);
    for (i64 i = 0; i < m.out * m.rank; ++i) b0[m.path].push_back(g(rng));
  }
  std::vector<TaskSource> tasks;
  for (i64 t = 0; t < kTasks; ++t) {
    std::map<std::string, std::vector<float>> a, b;
    for (const auto& m : kWideModules) {
      for (const float v : a0[m.path]) a[m.path].push_back(v + 0.001f * g(rng));
      for (i64 o = 0; o < m.out; ++o)
        for (i64 k = 0; k < m.rank; ++k) b[m.path].push_back(k < m.rank / 2 ? b0[m.path][o * m.rank + k] : g(rng));
    }
    const auto dir = tmp / ("task" + std::to_string(t));
    test::write_adapter_factors(dir, 8, kWideModules, a, b);
    tasks.push_back({"task" + std::to_string(t), dir});
  }
  return tasks;
}

}  // namespace revmerge::store_fixtures
