// merge_store (--method auto | rank) → bundle version 2 → revert: each representation exact at
// full size, the manifest's errors equal to dense ones, the budget kept, auto no worse than
// either representation alone, and bad budgets refused by name.
#include <gtest/gtest.h>

#include <omp.h>

#include <cmath>
#include <iostream>
#include <random>
#include <set>

#include "backend/deferred_backend.hpp"
#include "methods/adapter_writer.hpp"
#include "methods/store/allocation.hpp"
#include "methods/store/parallel_tasks.hpp"
#include "methods/store/shared_basis.hpp"
#include "methods/store/shared_rows.hpp"
#include "methods/store/store_modules.hpp"
#include "kernels/float_bits.hpp"
#include "methods/materialize_parts.hpp"
#include "revmerge/error.hpp"
#include "revmerge/resident.hpp"
#include "revmerge/store.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using test::ModuleSpec;
using i64 = std::int64_t;

constexpr int kRank = 16;
constexpr i64 kTasks = 4;

// q_proj modules like trained adapters (each task's delta has a fast-decaying spectrum, its
// own directions); v_proj modules like LoRA tasks from one initialisation (A moved a little
// from a shared init, B mostly shared, the shared product's spectrum flat): the first suit a
// truncation, the second RMM.
const std::vector<ModuleSpec> kModules = {{"model.layers.0.self_attn.q_proj", kRank, 32, 24},
                                          {"model.layers.0.self_attn.v_proj", kRank, 32, 20},
                                          {"model.layers.1.self_attn.q_proj", kRank, 32, 24},
                                          {"model.layers.1.self_attn.v_proj", kRank, 32, 20}};

bool shared_init(const ModuleSpec& m) { return m.path.find("v_proj") != std::string::npos; }

// `count` orthogonal vectors of length `len` (Gram–Schmidt on Gaussians), each of norm √len,
// as rows of a count × len matrix.
std::vector<float> orthogonal_rows(i64 count, i64 len, std::mt19937& rng) {
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

std::vector<TaskSource> write_family(const std::filesystem::path& tmp, unsigned seed = 7) {
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

StoreMergeOptions store_options(const std::vector<TaskSource>& tasks, StoreMethod method,
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
double objective(const BundleManifest& m) {
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

double stored_numbers(const BundleManifest& m) {
  double s = 0;
  for (const auto& mod : m.modules) s += double(mod.stored_numbers(static_cast<i64>(m.tasks.size())));
  return s;
}

double all_numbers(const BundleManifest& m) {
  double s = 0;
  for (const auto& mod : m.modules)
    for (const auto r : mod.task_ranks) s += double(r) * double(mod.in + mod.out);
  return s;
}

// The dense delta of task t, module `spec`, from its adapter folder (scale 1).
std::vector<double> task_delta(const std::filesystem::path& dir, const ModuleSpec& spec) {
  const PeftAdapter ad(dir);
  const auto* m = ad.find(spec.path);
  return test::dense_delta(ad.read_a(*m), ad.read_b(*m), m->rank, spec.in, spec.out, m->scale);
}

// Task t's factors of an rmm module as RMM reads them, f64: A (rank × in) and B with the scale
// folded in (out × rank), zero-padded to the module's rank.
std::pair<std::vector<double>, std::vector<double>> padded_factors(const std::filesystem::path& dir,
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
int rmm_checked = 0;  // rmm modules' task factors check_errors_are_dense_errors compared

double check_errors_are_dense_errors(const std::filesystem::path& dir, const std::vector<TaskSource>& tasks) {
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

TEST(StoreMerge, RankAtFullStorageRevertsEveryDeltaExactly) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  auto o = store_options(tasks, StoreMethod::rank, tmp / "bundle");
  o.storage.fraction = 1.0;
  const auto man = merge_store(o);
  EXPECT_EQ(man.format_version, 2);
  EXPECT_EQ(man.method, "rank");
  for (const auto& mod : man.modules) {
    EXPECT_EQ(mod.representation, Representation::rank);
    for (const auto e : mod.delta_error) EXPECT_LT(e, 1e-5) << mod.path;
  }
  EXPECT_LT(check_errors_are_dense_errors(tmp / "bundle", tasks), 1e-5);
}

TEST(StoreMerge, ManifestErrorsAreTheDenseErrorsOfTheRevertedTasks) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  for (const auto method : {StoreMethod::rank, StoreMethod::automatic})
    for (const double b : {0.2, 0.45}) {
      const auto out = tmp / ("b" + std::to_string(int(method)) + "-" + std::to_string(b));
      auto o = store_options(tasks, method, out);
      o.storage.fraction = b;
      merge_store(o);
      const double worst = check_errors_are_dense_errors(out, tasks);
      EXPECT_GT(worst, 1e-3);  // truncated: the comparison measured something
    }
  EXPECT_GT(rmm_checked, 0);  // auto chose RMM somewhere: its factor errors were compared too
}

TEST(StoreMerge, Bf16StorageErrorsDescribeTheRoundedFactors) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  auto o = store_options(tasks, StoreMethod::automatic, tmp / "bundle");
  o.storage.fraction = 0.6;
  o.dtype = DType::BF16;
  const auto man = merge_store(o);
  EXPECT_EQ(Bundle(tmp / "bundle").tensors().find(bundle_tensor_name(man.modules[0].path, "lora_A",
                                                                     man.modules[0].representation == Representation::rank ? "factors" : "mean"))->info->dtype,
            DType::BF16);
  check_errors_are_dense_errors(tmp / "bundle", tasks);
}

TEST(StoreMerge, StorageNeverExceedsTheBudget) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  for (const auto method : {StoreMethod::rank, StoreMethod::automatic})
    for (const double b : {0.05, 0.3, 0.56, 0.9}) {
      auto o = store_options(tasks, method, tmp / "out");
      o.storage.fraction = b;
      o.overwrite = true;
      const auto man = merge_store(o);
      EXPECT_LE(stored_numbers(man), b * all_numbers(man) + 1e-9) << b;
      EXPECT_NEAR(man.storage_ratio, stored_numbers(man) / all_numbers(man), 1e-12);
      // The greedy fill leaves less than one direction of the largest module unused.
      if (method == StoreMethod::rank) EXPECT_GT(stored_numbers(man), b * all_numbers(man) - 56);
    }
  // A budget in bytes: of the stored dtype (f32 here).
  auto o = store_options(tasks, StoreMethod::automatic, tmp / "bytes");
  o.storage.bytes = 6000;
  const auto man = merge_store(o);
  EXPECT_LE(man.stored_bytes, 6000u);
  EXPECT_LE(stored_numbers(man) * 4, 6000);
}

TEST(StoreMerge, AutoIsNoWorseThanEitherRepresentationAloneAndChoosesPerModule) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  // RMM at P = 1 everywhere stores (p(r + n) + r) / (n r) = 36 / 64 of the numbers.
  RmmMergeOptions r;
  r.tasks = tasks;
  r.basis = 1;
  r.out = tmp / "rmm";
  r.device = Device::cpu;
  const auto rmm = merge_rmm(r);
  const double b = rmm.storage_ratio;
  EXPECT_NEAR(b, 36.0 / 64.0, 1e-12);
  auto o = store_options(tasks, StoreMethod::rank, tmp / "rank");
  o.storage.fraction = b;
  const auto rank = merge_store(o);
  o = store_options(tasks, StoreMethod::automatic, tmp / "auto");
  o.storage.fraction = b;
  const auto aut = merge_store(o);
  const double e_rmm = objective(rmm), e_rank = objective(rank), e_auto = objective(aut);
  EXPECT_LE(e_auto, 1.01 * std::min(e_rmm, e_rank)) << e_auto << " rmm " << e_rmm << " rank " << e_rank;
  // Both representations lose somewhere: the family is mixed, so auto beats both clearly.
  EXPECT_LT(e_auto, 0.9 * std::min(e_rmm, e_rank));
  // The trained-like modules are truncated; a shared basis (RMM or shared rows) serves at least
  // one shared-init module.
  int shared_modules = 0;
  for (const auto& mod : aut.modules) {
    const bool v = mod.path.find("v_proj") != std::string::npos;
    if (!v) EXPECT_EQ(mod.representation, Representation::rank) << mod.path;
    shared_modules += mod.representation != Representation::rank;
  }
  EXPECT_GE(shared_modules, 1);
  // RMM and truncations alone: still no worse than either.
  o = store_options(tasks, StoreMethod::automatic, tmp / "auto-rmm");
  o.storage.fraction = b;
  o.representations = {Representation::rmm, Representation::rank};
  const auto rmm_rank = merge_store(o);
  EXPECT_LE(objective(rmm_rank), 1.01 * std::min(e_rmm, e_rank));
  EXPECT_LE(e_auto, 1.01 * objective(rmm_rank));
  std::cout << "objective at storage " << b << ": auto " << e_auto << ", rmm P=1 " << e_rmm
            << ", rank " << e_rank << "\n";
  EXPECT_LE(stored_numbers(aut), b * all_numbers(aut) + 1e-9);
}

// Tasks that share their A almost exactly and differ in B.
std::vector<TaskSource> write_shared_a_family(const std::filesystem::path& tmp) {
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

// Tasks that share their A almost exactly and differ in B: RMM keeps A's mean alone (P = 0) and
// spends on B — a P per side — and the errors of such pairs are still the dense ones.
TEST(StoreMerge, RmmTakesABasisSizePerSide) {
  test::TempDir tmp;
  const auto tasks = write_shared_a_family(tmp.path());
  auto o = store_options(tasks, StoreMethod::automatic, tmp / "bundle");
  o.storage.fraction = 0.62;
  o.representations = {Representation::rmm};  // a shared row basis would serve these best
  const auto man = merge_store(o);
  int per_side = 0;  // modules keeping A's mean alone
  for (const auto& mod : man.modules) {
    ASSERT_EQ(mod.representation, Representation::rmm) << mod.path;
    EXPECT_LT(mod.basis[0], mod.basis[1]) << mod.path;  // B's basis is where the budget goes
    per_side += mod.basis[0] == 0;  // A's mean alone is every task's A
    for (const auto e : mod.delta_error) EXPECT_LT(e, 0.6) << mod.path;
  }
  EXPECT_GT(per_side, 0);
  EXPECT_FALSE(Bundle(tmp / "bundle").tensors().find(bundle_tensor_name(man.modules[0].path, "lora_A", "basis")));
  check_errors_are_dense_errors(tmp / "bundle", tasks);
  EXPECT_EQ(parse_manifest(manifest_to_json(man), "m.json").modules[0].basis, man.modules[0].basis);
}

// One row basis for all tasks' deltas where their A's share an initialisation: exact errors in
// closed form, and against dense arithmetic after revert.
TEST(StoreMerge, SharedRowBasisServesTasksFromOneInitialisation) {
  test::TempDir tmp;
  const auto tasks = write_shared_a_family(tmp.path());
  // Closed-form errors of every K against the dense projection ΔW_i (I − V_K V_Kᵀ).
  AdapterSet set = open_adapter_set(tasks);
  const auto& pm = set.plan[0];
  const auto f = read_module_factors(set, pm);
  const auto cpu = make_cpu_backend({1, 0});
  const auto g = module_grams(*cpu, {}, f, pm.out, pm.in);
  const auto s = shared_rows(*cpu, {}, f, g.a, g.b, pm.out, pm.in);
  ASSERT_EQ(s.total_rank, kTasks * kRank);
  const auto deferred = test::make_deferred_backend(2);
  for (const i64 k : {1, 8, 16}) {
    for (const auto storage : {DType::F32, DType::BF16}) {
      const auto parts = shared_rows_parts(*cpu, {}, s, f, k, storage);
      // On a discrete device's path (uploads, queued products): the CPU's parts bit for bit.
      const auto there = shared_rows_parts(*deferred, deferred->create_stream(), s, f, k, storage);
      EXPECT_EQ(there.basis_t, parts.basis_t);
      EXPECT_EQ(there.task_b, parts.task_b);
      EXPECT_EQ(there.error_sq, parts.error_sq);
      for (i64 t = 0; t < kTasks; ++t) {
        const auto want = test::dense_delta(f[t].a, f[t].b, f[t].rank, pm.in, pm.out, f[t].scale);
        const auto got = test::dense_delta(parts.basis_t, parts.task_b[t], k, pm.in, pm.out, 1.0);
        double e = 0;
        for (std::size_t i = 0; i < want.size(); ++i) e += (got[i] - want[i]) * (got[i] - want[i]);
        SCOPED_TRACE(::testing::Message() << "K " << k << " task " << t << " " << dtype_name(storage));
        // The stored parts' errors are their dense errors; in f32 also the closed form of pass 1.
        EXPECT_NEAR(parts.error_sq[t], e, 1e-9 * s.norm_sq[t] + 1e-6 * e);
        if (storage == DType::F32) EXPECT_NEAR(e, s.error_sq[t][k - 1], 1e-6 * s.norm_sq[t]);
      }
    }
  }
  auto o = store_options(tasks, StoreMethod::automatic, tmp / "bundle");
  o.storage.fraction = 0.6;
  o.representations = {Representation::shared_rows};
  const auto man = merge_store(o);
  for (const auto& mod : man.modules) {
    EXPECT_EQ(mod.representation, Representation::shared_rows) << mod.path;
    EXPECT_EQ(mod.shared_rank, kRank) << mod.path;  // A0's rows span every task's row space
    for (const auto e : mod.delta_error) EXPECT_LT(e, 0.01) << mod.path;
  }
  check_errors_are_dense_errors(tmp / "bundle", tasks);
  EXPECT_EQ(manifest_to_json(parse_manifest(manifest_to_json(man), "m.json")), manifest_to_json(man));
}

// Tasks whose A's share one initialisation and whose B's share half their columns (rank 8,
// 96 → 80): their row spaces lie in A0's 8 directions, their column spaces in 4 + 4·4 = 20.
const std::vector<ModuleSpec> kWideModules = {{"model.layers.0.self_attn.q_proj", 8, 96, 80},
                                              {"model.layers.0.self_attn.v_proj", 8, 96, 80}};

std::vector<TaskSource> write_shared_columns_family(const std::filesystem::path& tmp) {
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

// Shared bases' parts made on two backends: the same bits, every one.
void expect_same_parts(const SharedBasisParts& there, const SharedBasisParts& here) {
  EXPECT_EQ(there.vt, here.vt);
  EXPECT_EQ(there.u, here.u);
  EXPECT_EQ(there.core_a, here.core_a);
  EXPECT_EQ(there.core_b, here.core_b);
  EXPECT_EQ(there.core_a64, here.core_a64);
  EXPECT_EQ(there.core_b64, here.core_b64);
  EXPECT_EQ(there.vv, here.vv);
  EXPECT_EQ(there.uu, here.uu);
}

// Row and column bases shared by the tasks: every (Kv, Ku)'s closed-form errors are the dense
// errors of the factors a task reverts to, full size is exact, and auto stores these tasks in
// A0's 8 rows and their 20 columns.
TEST(StoreMerge, SharedBasesServeTasksSharingAnInitAndColumns) {
  test::TempDir tmp;
  const auto tasks = write_shared_columns_family(tmp.path());
  AdapterSet set = open_adapter_set(tasks);
  const auto& pm = set.plan[0];
  const auto f = read_module_factors(set, pm);
  const auto cpu = make_cpu_backend({1, 0});
  const auto deferred = test::make_deferred_backend(2);
  const auto s = shared_basis(*cpu, {}, f, module_grams(*cpu, {}, f, pm.out, pm.in), pm.out, pm.in);
  const i64 R = kTasks * 8;
  ASSERT_EQ(s.rows.total_rank, R);
  const std::vector<i64> kv = {1, 8, 20, R}, ku = {3, 20, R};
  const auto closed = shared_basis_errors(*cpu, {}, s, f, kv, ku);
  EXPECT_EQ(shared_basis_errors(*deferred, deferred->create_stream(), s, f, kv, ku), closed);
  for (std::size_t x = 0; x < kv.size(); ++x)
    for (std::size_t y = 0; y < ku.size(); ++y) {
      // The closed forms against the dense errors of the factors a task reverts to: pass 1's (the
      // bases unrounded) and pass 2's (what is stored, f32 and bf16: rounding counts there).
      for (const auto storage : {DType::F32, DType::BF16}) {
        const auto parts = shared_basis_parts(*cpu, {}, s, f, kv[x], ku[y], storage);
        // On a discrete device's path (uploads, queued products): the CPU's parts bit for bit.
        const auto there = shared_basis_parts(*deferred, deferred->create_stream(), s, f, kv[x], ku[y], storage);
        expect_same_parts(there, parts);
        const auto stored = shared_basis_stored_errors(*cpu, {}, parts, f, s.rows.norm_sq);
        EXPECT_EQ(shared_basis_stored_errors(*deferred, deferred->create_stream(), there, f, s.rows.norm_sq), stored);
        i64 first = 0;
        for (i64 t = 0; t < kTasks; ++t) {
          std::vector<float> a, b;
          shared_basis_task(parts.vt.data(), parts.u.data(), parts.core_a.data(), parts.core_b.data(), pm.in,
                            pm.out, kv[x], ku[y], R, first, f[t].rank, a, b);
          first += f[t].rank;
          const auto want = test::dense_delta(f[t].a, f[t].b, f[t].rank, pm.in, pm.out, f[t].scale);
          const auto got = test::dense_delta(a, b, f[t].rank, pm.in, pm.out, 1.0);
          double e = 0;
          for (std::size_t i = 0; i < want.size(); ++i) e += (got[i] - want[i]) * (got[i] - want[i]);
          const double norm_sq = s.rows.norm_sq[t];
          SCOPED_TRACE(::testing::Message() << "Kv " << kv[x] << " Ku " << ku[y] << " task " << t << " "
                                            << dtype_name(storage));
          EXPECT_NEAR(stored[t], e, 1e-9 * norm_sq + 1e-6 * e);
          if (storage == DType::BF16) continue;
          EXPECT_NEAR(e, closed[x * ku.size() + y][t], 1e-6 * norm_sq);
          if (kv[x] == R && ku[y] == R) EXPECT_LT(std::sqrt(e / norm_sq), 1e-5);  // exact at full size
        }
      }
    }
  auto o = store_options(tasks, StoreMethod::automatic, tmp / "bundle");
  o.storage.fraction = 0.6;
  o.representations = {Representation::shared};
  const auto man = merge_store(o);
  for (const auto& mod : man.modules) {
    ASSERT_EQ(mod.representation, Representation::shared) << mod.path;
    EXPECT_GE(mod.shared_basis[0], 8) << mod.path;  // A0's rows, then what budget is left
    EXPECT_GE(mod.shared_basis[1], 20) << mod.path;
    for (const auto e : mod.delta_error) EXPECT_LT(e, 0.01) << mod.path;
  }
  EXPECT_LE(stored_numbers(man), 0.6 * all_numbers(man));
  check_errors_are_dense_errors(tmp / "bundle", tasks);
  EXPECT_EQ(manifest_to_json(parse_manifest(manifest_to_json(man), "m.json")), manifest_to_json(man));
  // Under auto with every representation these tasks lose no more than with the shared bases
  // alone (it takes them, or an option as good: which one can turn on the BLAS kernels'
  // rounding, the two being within a fraction of a percent here).
  auto every = store_options(tasks, StoreMethod::automatic, tmp / "every");
  every.storage.fraction = 0.6;
  const auto chosen = merge_store(every);
  const auto mean_error = [](const BundleManifest& m) {
    double e = 0, count = 0;
    for (const auto& mod : m.modules)
      for (const auto x : mod.delta_error) e += x * x, ++count;
    return std::sqrt(e / count);
  };
  EXPECT_LE(mean_error(chosen), 1.01 * mean_error(man));
  EXPECT_LE(stored_numbers(chosen), 0.6 * all_numbers(chosen));
}

// ‖X‖² of a dense matrix.
double frobenius_sq(const std::vector<double>& x) {
  double e = 0;
  for (const double v : x) e += v * v;
  return e;
}

// y = basis basisᵀ applied to x's rows (x rows × n, basis n × k): the projection on its columns.
std::vector<double> project_rows(const std::vector<double>& x, i64 rows, i64 n, const std::vector<double>& basis,
                                 i64 k) {
  std::vector<double> y(x.size(), 0.0);
  for (i64 i = 0; i < rows; ++i)
    for (i64 c = 0; c < k; ++c) {
      double d = 0;
      for (i64 j = 0; j < n; ++j) d += x[i * n + j] * basis[j * k + c];
      for (i64 j = 0; j < n; ++j) y[i * n + j] += d * basis[j * k + c];
    }
  return y;
}

// The shared bases of tasks whose ranks and scales differ (R = 6 + 2 + 4 + 6), made on the
// backend: every K's and (Kv, Ku)'s errors against dense projections of the deltas, the bases
// orthonormal, and the deferred backend (a discrete device's path) the CPU's bit for bit.
TEST(StoreMerge, SharedBasesOfTasksOfUnequalRanksOnBothBackends) {
  const i64 in = 40, out = 30;
  const std::vector<i64> ranks = {6, 2, 4, 6};
  const std::vector<double> scales = {1.0, 0.5, 2.0, 1.5};
  std::mt19937 rng(17);
  std::normal_distribution<float> g;
  std::vector<TaskFactors> f;
  for (std::size_t t = 0; t < ranks.size(); ++t) {
    TaskFactors tf{{}, {}, ranks[t], scales[t]};
    for (i64 e = 0; e < ranks[t] * in; ++e) tf.a.push_back(g(rng));
    for (i64 e = 0; e < out * ranks[t]; ++e) tf.b.push_back(g(rng));
    f.push_back(std::move(tf));
  }
  const i64 R = 18;
  const auto cpu = make_cpu_backend({1, 0});
  const auto deferred = test::make_deferred_backend(2);
  const Stream st = deferred->create_stream();
  const auto s = shared_basis(*cpu, {}, f, module_grams(*cpu, {}, f, out, in), out, in);
  const auto d = shared_basis(*deferred, st, f, module_grams(*deferred, st, f, out, in), out, in);
  for (const auto [here, there] : {std::pair{&s.rows, &d.rows}, std::pair{&s.cols, &d.cols}}) {
    EXPECT_EQ(there->to_basis, here->to_basis);
    EXPECT_EQ(there->error_sq, here->error_sq);
    EXPECT_EQ(there->lambda, here->lambda);
    EXPECT_EQ(there->norm_sq, here->norm_sq);
  }
  // V = Aᵀ · rows.to_basis (in × R) and U = Bsᵀ · cols.to_basis (out × R), Bs the B_iᵀ stacked.
  std::vector<double> v(static_cast<std::size_t>(in * R), 0.0), u(static_cast<std::size_t>(out * R), 0.0);
  for (std::size_t t = 0, o = 0; t < f.size(); o += f[t].rank, ++t)
    for (i64 k = 0; k < f[t].rank; ++k)
      for (i64 c = 0; c < R; ++c) {
        for (i64 j = 0; j < in; ++j) v[j * R + c] += double(f[t].a[k * in + j]) * s.rows.to_basis[(o + k) * R + c];
        for (i64 j = 0; j < out; ++j)
          u[j * R + c] += double(f[t].b[j * f[t].rank + k]) * s.cols.to_basis[(o + k) * R + c];
      }
  for (const auto& [basis, rows] : {std::pair{&v, in}, std::pair{&u, out}})
    for (i64 c = 0; c < R; ++c)
      for (i64 e = 0; e <= c; ++e) {
        double dot = 0;
        for (i64 j = 0; j < rows; ++j) dot += (*basis)[j * R + c] * (*basis)[j * R + e];
        ASSERT_NEAR(dot, c == e ? 1.0 : 0.0, 1e-9) << c << ", " << e;
      }
  const auto first_k = [&](const std::vector<double>& basis, i64 rows, i64 k) {
    std::vector<double> x(static_cast<std::size_t>(rows * k));
    for (i64 j = 0; j < rows; ++j)
      for (i64 c = 0; c < k; ++c) x[j * k + c] = basis[j * R + c];
    return x;
  };
  const std::vector<i64> kv = {1, 5, 12, R}, ku = {2, 7, R};
  const auto closed = shared_basis_errors(*cpu, {}, s, f, kv, ku);
  EXPECT_EQ(shared_basis_errors(*deferred, st, d, f, kv, ku), closed);
  for (std::size_t t = 0; t < f.size(); ++t) {
    SCOPED_TRACE(::testing::Message() << "task " << t);
    const auto delta = test::dense_delta(f[t].a, f[t].b, f[t].rank, in, out, f[t].scale);  // out × in
    const double norm_sq = frobenius_sq(delta);
    EXPECT_NEAR(s.rows.norm_sq[t], norm_sq, 1e-12 * norm_sq);
    std::vector<double> delta_t(delta.size());  // in × out
    for (i64 o = 0; o < out; ++o)
      for (i64 j = 0; j < in; ++j) delta_t[j * out + o] = delta[o * in + j];
    for (const i64 k : {i64{1}, i64{5}, i64{12}, R}) {
      auto rows = project_rows(delta, out, in, first_k(v, in, k), k);
      auto cols = project_rows(delta_t, in, out, first_k(u, out, k), k);
      for (std::size_t e = 0; e < rows.size(); ++e) rows[e] -= delta[e], cols[e] -= delta_t[e];
      EXPECT_NEAR(s.rows.error_sq[t][k - 1], frobenius_sq(rows), 1e-10 * norm_sq) << "K " << k;
      EXPECT_NEAR(s.cols.error_sq[t][k - 1], frobenius_sq(cols), 1e-10 * norm_sq) << "K " << k;
    }
    for (std::size_t x = 0; x < kv.size(); ++x)
      for (std::size_t y = 0; y < ku.size(); ++y) {
        // U Uᵀ ΔW V Vᵀ: the rows projected on V, then the columns on U.
        const auto rows = project_rows(delta, out, in, first_k(v, in, kv[x]), kv[x]);
        std::vector<double> rows_t(delta.size());
        for (i64 o = 0; o < out; ++o)
          for (i64 j = 0; j < in; ++j) rows_t[j * out + o] = rows[o * in + j];
        auto both = project_rows(rows_t, in, out, first_k(u, out, ku[y]), ku[y]);
        for (std::size_t e = 0; e < both.size(); ++e) both[e] -= delta_t[e];
        EXPECT_NEAR(closed[x * ku.size() + y][t], frobenius_sq(both), 1e-10 * norm_sq)
            << "Kv " << kv[x] << " Ku " << ku[y];
      }
  }
  // The row basis stored alone (K = 5): its parts' errors their dense errors, on both backends.
  const auto row_parts = shared_rows_parts(*cpu, {}, s.rows, f, 5, DType::BF16);
  const auto row_there = shared_rows_parts(*deferred, st, d.rows, f, 5, DType::BF16);
  EXPECT_EQ(row_there.task_b, row_parts.task_b);
  EXPECT_EQ(row_there.error_sq, row_parts.error_sq);
  for (std::size_t t = 0; t < f.size(); ++t) {
    const auto want = test::dense_delta(f[t].a, f[t].b, f[t].rank, in, out, f[t].scale);
    const auto got = test::dense_delta(row_parts.basis_t, row_parts.task_b[t], 5, in, out, 1.0);
    double e = 0;
    for (std::size_t i = 0; i < want.size(); ++i) e += (got[i] - want[i]) * (got[i] - want[i]);
    EXPECT_NEAR(row_parts.error_sq[t], e, 1e-9 * s.rows.norm_sq[t] + 1e-6 * e) << "task " << t;
  }
  const auto parts = shared_basis_parts(*cpu, {}, s, f, 5, 7, DType::BF16);
  const auto there = shared_basis_parts(*deferred, st, d, f, 5, 7, DType::BF16);
  expect_same_parts(there, parts);
  const auto stored = shared_basis_stored_errors(*cpu, {}, parts, f, s.rows.norm_sq);
  EXPECT_EQ(shared_basis_stored_errors(*deferred, st, there, f, s.rows.norm_sq), stored);
  for (std::size_t t = 0, first = 0; t < f.size(); first += f[t].rank, ++t) {
    std::vector<float> a, b;
    shared_basis_task(parts.vt.data(), parts.u.data(), parts.core_a.data(), parts.core_b.data(), in, out, 5, 7, R,
                      static_cast<i64>(first), f[t].rank, a, b);
    const auto want = test::dense_delta(f[t].a, f[t].b, f[t].rank, in, out, f[t].scale);
    const auto got = test::dense_delta(a, b, f[t].rank, in, out, 1.0);
    double e = 0;
    for (std::size_t i = 0; i < want.size(); ++i) e += (got[i] - want[i]) * (got[i] - want[i]);
    EXPECT_NEAR(stored[t], e, 1e-9 * s.rows.norm_sq[t] + 1e-6 * e) << "task " << t;
  }
}

// Pass 1 hands its shared bases to pass 2 (so they are not found twice): what it keeps is
// bitwise what pass 2 would find, and only what storing needs.
TEST(StoreMerge, PassOneKeepsTheBasesPassTwoWouldFind) {
  test::TempDir tmp;
  const auto tasks = write_shared_columns_family(tmp.path());
  AdapterSet set = open_adapter_set(tasks);
  const auto cpu = make_cpu_backend({1, 0});
  for (const auto& pm : set.plan) {
    const auto f = read_module_factors(set, pm);
    SharedBasis kept;
    const auto measured = measure(cpu.get(), pm, f, {}, DType::F32, 1, true, true, &kept);
    EXPECT_FALSE(measured.options.empty()) << pm.path;
    const auto again =
        shared_basis(*cpu, {}, f, module_grams(*cpu, {}, f, pm.out, pm.in), pm.out, pm.in, /*errors=*/false);
    EXPECT_EQ(kept.rows.to_basis, again.rows.to_basis) << pm.path;
    EXPECT_EQ(kept.cols.to_basis, again.cols.to_basis) << pm.path;
    EXPECT_EQ(kept.rows.norm_sq, again.rows.norm_sq) << pm.path;
    EXPECT_TRUE(kept.rows.gram.empty() && kept.cols.error_sq.empty()) << pm.path;
    EXPECT_EQ(shared_basis_bytes(kept), 8 * (2 * kept.rows.to_basis.size() + 2 * kept.rows.norm_sq.size() +
                                             2 * kept.rows.lambda.size()));
  }
}

// Task 0's deltas have a flat spectrum, the others' decay fast: the mean objective spends on
// the easy tasks, the max objective evens out the worst task's error.
TEST(StoreMerge, MaxObjectiveLowersTheWorstTask) {
  test::TempDir tmp;
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  std::vector<TaskSource> tasks;
  for (i64 t = 0; t < kTasks; ++t) {
    std::map<std::string, std::vector<float>> a, b;
    const double decay = t == 0 ? 0.95 : 0.5;
    for (const auto& m : kModules) {
      for (i64 i = 0; i < m.rank * m.in; ++i) a[m.path].push_back(g(rng));
      for (i64 o = 0; o < m.out; ++o)
        for (i64 k = 0; k < m.rank; ++k) b[m.path].push_back(float(std::pow(decay, double(k))) * g(rng));
    }
    const auto dir = tmp / ("task" + std::to_string(t));
    test::write_adapter_factors(dir, kRank, kModules, a, b);
    tasks.push_back({"task" + std::to_string(t), dir});
  }
  const auto task_errors = [](const BundleManifest& m) {
    std::vector<double> e;
    for (std::size_t t = 0; t < m.tasks.size(); ++t) {
      double num = 0, den = 0;
      for (const auto& mod : m.modules)
        num += std::pow(mod.delta_error[t] * mod.delta_norm[t], 2), den += std::pow(mod.delta_norm[t], 2);
      e.push_back(std::sqrt(num / den));
    }
    return e;
  };
  for (const auto method : {StoreMethod::rank, StoreMethod::automatic}) {
    auto o = store_options(tasks, method, tmp / "mean");
    o.storage.fraction = 0.3;
    const auto mean = merge_store(o);
    o.out = tmp / "max";
    o.objective = StoreObjective::max;
    const auto max = merge_store(o);
    const auto em = task_errors(mean), ex = task_errors(max);
    const double worst_mean = *std::max_element(em.begin(), em.end());
    const double worst_max = *std::max_element(ex.begin(), ex.end());
    EXPECT_LT(worst_max, 0.9 * worst_mean);
    EXPECT_LE(objective(mean), objective(max) * (1 + 1e-9));  // each wins its own objective
    EXPECT_LE(stored_numbers(max), 0.3 * all_numbers(max) + 1e-9);
    std::cout << "worst task error at storage 0.3: objective mean " << worst_mean << ", max " << worst_max << "\n";
    std::filesystem::remove_all(tmp / "mean");
    std::filesystem::remove_all(tmp / "max");
  }
  auto bad = store_options(tasks, StoreMethod::automatic, tmp / "bad");
  bad.max_error = 0.1;
  bad.objective = StoreObjective::max;
  EXPECT_THROW(merge_store(bad), usage_error);
  EXPECT_THROW(parse_store_objective("median", "--objective"), usage_error);
}

TEST(StoreMerge, MaxErrorBoundsEveryTaskInEveryModule) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  for (const double bound : {0.05, 0.3}) {
    auto o = store_options(tasks, StoreMethod::automatic, tmp / "out");
    o.max_error = bound;
    o.overwrite = true;
    const auto man = merge_store(o);
    for (const auto& mod : man.modules)
      for (const auto e : mod.delta_error) EXPECT_LE(e, bound * (1 + 1e-6) + 1e-6) << mod.path;
    EXPECT_LT(man.storage_ratio, 1.0);
  }
}

TEST(StoreMerge, BadBudgetsAreRefusedNamingTheOption) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  const auto refused = [&](StoreMergeOptions o, const std::string& needle) {
    try {
      merge_store(o);
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const usage_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(std::filesystem::exists(o.out));
  };
  auto o = store_options(tasks, StoreMethod::automatic, tmp / "out");
  refused(o, "--storage");  // neither budget nor bound
  o.storage.fraction = 0.5;
  o.max_error = 0.1;
  refused(o, "either --storage");
  o.max_error.reset();
  o.storage.fraction = 1.5;
  refused(o, "--storage");
  o.storage.fraction = 0.0;
  refused(o, "--storage");
  o.storage = {};
  o.storage.bytes = 1ull << 40;
  refused(o, "more than storing every task");
  o.storage = {};
  o.max_error = -0.1;
  refused(o, "--max-error");
  o = store_options(tasks, StoreMethod::rank, tmp / "out");
  o.storage.fraction = 0.5;
  o.rmm_basis = {1};
  refused(o, "--basis");
  o = store_options(tasks, StoreMethod::automatic, tmp / "out");
  o.storage.fraction = 0.5;
  o.rmm_basis = {4};
  refused(o, "--basis 4");

  EXPECT_EQ(*parse_storage_budget("0.25", "--storage").fraction, 0.25);
  EXPECT_EQ(*parse_storage_budget("25%", "--storage").fraction, 0.25);
  EXPECT_EQ(*parse_storage_budget("2KiB", "--storage").bytes, 2048u);
  for (const char* bad : {"", "0", "1.5", "150%", "2 parsecs", "-0.5", "abc"})
    EXPECT_THROW(parse_storage_budget(bad, "--storage"), usage_error) << bad;
}

TEST(StoreMerge, ManifestVersion2RoundTripsAndRefusesBadKeptRanks) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  auto o = store_options(tasks, StoreMethod::automatic, tmp / "bundle");
  o.storage.fraction = 0.5;
  const auto man = merge_store(o);
  const auto text = manifest_to_json(man);
  const auto back = parse_manifest(text, "m.json");
  EXPECT_EQ(manifest_to_json(back), text);
  // A kept rank above the task's own rank is refused by name.
  auto broken = man;
  for (auto& mod : broken.modules)
    if (mod.representation == Representation::rank) {
      mod.kept_ranks[0] = mod.task_ranks[0] + 1;
      break;
    }
  EXPECT_THROW(parse_manifest(manifest_to_json(broken), "m.json"), format_error);
}

// revmerge add: the old tasks' bytes untouched, the new tasks within the modules' errors, again
// and again, from either format version.
TEST(StoreAdd, NewTasksJoinWithoutTouchingTheOldOnes) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  const std::vector<TaskSource> first(tasks.begin(), tasks.begin() + 2);
  auto o = store_options(first, StoreMethod::automatic, tmp / "two");
  o.storage.fraction = 0.5;
  const auto two = merge_store(o);
  AddTasksOptions add;
  add.bundle = tmp / "two";
  add.tasks = {tasks[2]};
  add.out = tmp / "three";
  const auto three = add_tasks(add);
  add.bundle = tmp / "three";
  add.tasks = {tasks[3]};
  add.out = tmp / "four";
  const auto four = add_tasks(add);
  EXPECT_EQ(four.base_tasks, 2);
  ASSERT_EQ(four.tasks.size(), 4u);
  const Bundle b2(tmp / "two"), b3(tmp / "three"), b4(tmp / "four");
  // Every tensor of the first bundle is in the last one, byte for byte.
  for (const auto& [file, info] : b2.tensors().tensors()) {
    const auto* later = b4.tensors().find(info->name);
    ASSERT_NE(later, nullptr) << info->name;
    const auto x = file->bytes(*info), y = later->file->bytes(*later->info);
    EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << info->name;
  }
  for (std::size_t m = 0; m < four.modules.size(); ++m) {
    const auto& mod = four.modules[m];
    // Old tasks revert to the same bits; task 2 the same after the second add.
    for (i64 t = 0; t < 2; ++t) EXPECT_EQ(revert_module(b4, m, t).a, revert_module(b2, m, t).a);
    EXPECT_EQ(revert_module(b4, m, 2).b, revert_module(b3, m, 2).b);
    // New tasks within the module's worst error before them (rounding aside).
    double target = 0;
    for (const double e : two.modules[m].delta_error) target = std::max(target, e);
    for (i64 t = 2; t < 4; ++t) EXPECT_LE(mod.delta_error[t], target + 1e-6) << mod.path;
    EXPECT_EQ(mod.added_kept_ranks.size(), 2u);
  }
  check_errors_are_dense_errors(tmp / "four", tasks);
  EXPECT_EQ(manifest_to_json(parse_manifest(manifest_to_json(four), "m.json")), manifest_to_json(four));

  // A version 1 bundle takes tasks too; an explicit bound holds.
  RmmMergeOptions r;
  r.tasks = first;
  r.basis = 1;
  r.out = tmp / "v1";
  r.device = Device::cpu;
  merge_rmm(r);
  add.bundle = tmp / "v1";
  add.tasks = {tasks[2], tasks[3]};
  add.out = tmp / "v1-four";
  add.max_error = 0.02;
  const auto v1 = add_tasks(add);
  EXPECT_EQ(v1.format_version, 2);
  EXPECT_EQ(v1.base_tasks, 2);
  for (const auto& mod : v1.modules)
    for (i64 t = 2; t < 4; ++t) EXPECT_LE(mod.delta_error[t], 0.02 + 1e-6);
  check_errors_are_dense_errors(tmp / "v1-four", tasks);
}

TEST(StoreAdd, BadAdditionsAreRefusedAndWriteNothing) {
  test::TempDir tmp;
  const auto tasks = write_family(tmp.path());
  auto o = store_options({tasks[0], tasks[1]}, StoreMethod::rank, tmp / "b");
  o.storage.fraction = 0.5;
  merge_store(o);
  const auto refused = [&](AddTasksOptions a, const std::string& needle) {
    try {
      add_tasks(a);
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(std::filesystem::exists(a.out));
  };
  AddTasksOptions a;
  a.bundle = tmp / "b";
  a.out = tmp / "out";
  a.tasks = {tasks[1]};
  refused(a, "task1");  // already in the bundle
  a.tasks = {{"other", std::filesystem::path(REVMERGE_SOURCE_DIR) / "tests/fixtures/peft/plain"}};
  refused(a, "the adapters adapt a 32 × 32 weight, the bundle a 24 × 32 one");
  a.tasks = {tasks[2]};
  a.max_error = 1.5;
  refused(a, "--max-error");
  a.max_error.reset();
  a.out = tmp / "b";  // the bundle itself, without overwrite
  const auto before = test::read_bytes(tmp / "b" / kBundleManifestName);
  EXPECT_THROW(add_tasks(a), error);
  EXPECT_EQ(test::read_bytes(tmp / "b" / kBundleManifestName), before);
  // With overwrite the bundle may be updated in place, but neither a new task's folder nor a
  // folder holding the bundle is replaced.
  a.overwrite = true;
  const auto adapter = test::read_bytes(tasks[2].adapter / kAdapterWeightsName);
  for (const auto& [out, needle] : {std::pair{tasks[2].adapter, "it is an input"}, {tmp.path(), "it holds an input"}}) {
    a.out = out;
    try {
      add_tasks(a);
      ADD_FAILURE() << "accepted: --out " << out;
    } catch (const usage_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(test::read_bytes(tasks[2].adapter / kAdapterWeightsName), adapter);
  EXPECT_EQ(test::read_bytes(tmp / "b" / kBundleManifestName), before);
  a.out = tmp / "b";
  EXPECT_EQ(add_tasks(a).tasks.size(), 3u);
}

// The allocation against every combination of choices on a small case.
// A resident bundle rebuilds every task of every representation with revert's bits: rmm
// (version 1 and a P per side), rank, shared rows, shared bases and tasks added later; in bf16
// and f16 as the one rounding of those; any subset of modules in any order; bad calls refused.
TEST(ResidentBundle, RebuildsEveryRepresentationAsRevertDoes) {
  test::TempDir tmp;
  const auto family = write_family(tmp / "family");
  std::vector<std::filesystem::path> bundles;
  RmmMergeOptions r;
  r.tasks = family, r.basis = 2, r.out = tmp / "v1", r.device = Device::cpu;
  merge_rmm(r);
  bundles.push_back(r.out);
  auto o = store_options(family, StoreMethod::automatic, tmp / "auto");
  o.storage.fraction = 0.5;
  o.dtype = DType::BF16;  // the stored type the tiles read most
  merge_store(o);
  bundles.push_back(o.out);
  r.dtype = DType::F16, r.out = tmp / "v1-f16";
  merge_rmm(r);
  bundles.push_back(r.out);
  o = store_options(write_shared_a_family(tmp / "rows"), StoreMethod::automatic, tmp / "shared_rows");
  o.storage.fraction = 0.6, o.representations = {Representation::shared_rows};
  merge_store(o);
  bundles.push_back(o.out);
  o = store_options(write_shared_columns_family(tmp / "columns"), StoreMethod::automatic, tmp / "shared");
  o.storage.fraction = 0.6, o.representations = {Representation::shared};
  merge_store(o);
  bundles.push_back(o.out);
  o = store_options({family.begin(), family.begin() + 3}, StoreMethod::automatic, tmp / "three");
  o.storage.fraction = 0.5;
  merge_store(o);
  AddTasksOptions add;
  add.bundle = o.out, add.tasks = {family[3]}, add.out = tmp / "added";
  add_tasks(add);
  bundles.push_back(add.out);
  std::set<Representation> seen;
  for (const auto& dir : bundles) {
    const Bundle bundle(dir);
    const auto& man = bundle.manifest();
    ResidentBundle rb(dir, Device::cpu);
    EXPECT_TRUE(rb.on_host());
    EXPECT_GE(rb.memory_bytes(), std::filesystem::file_size(dir / kBundleTensorsName) - 8192);
    const std::size_t nm = man.modules.size();
    for (i64 t = 0; t < static_cast<i64>(man.tasks.size()); ++t) {
      std::vector<std::vector<float>> a(nm), b(nm);
      std::vector<std::vector<std::uint16_t>> a16(nm), b16(nm), ah(nm), bh(nm);
      std::vector<void*> pa, pb, pa16, pb16, pah, pbh;
      for (std::size_t m = 0; m < nm; ++m) {
        const auto& mod = man.modules[m];
        seen.insert(mod.representation);
        a[m].resize(mod.rank * mod.in), b[m].resize(mod.out * mod.rank);
        a16[m].resize(a[m].size()), b16[m].resize(b[m].size()), ah[m].resize(a[m].size()), bh[m].resize(b[m].size());
        pa.push_back(a[m].data()), pb.push_back(b[m].data());
        pa16.push_back(a16[m].data()), pb16.push_back(b16[m].data());
        pah.push_back(ah[m].data()), pbh.push_back(bh[m].data());
      }
      rb.materialize(t, {}, DType::F32, pa, pb);
      rb.materialize(t, {}, DType::BF16, pa16, pb16);
      rb.materialize(t, {}, DType::F16, pah, pbh);
      for (std::size_t m = 0; m < nm; ++m) {
        const auto want = revert_module(bundle, m, t, Device::cpu);
        ASSERT_EQ(a[m], want.a) << dir << " module " << m << " task " << t;
        ASSERT_EQ(b[m], want.b) << dir << " module " << m << " task " << t;
        // The CPU's tiles against the element routine the GPU runs, element by element.
        std::vector<float> ea(a[m].size()), eb(b[m].size());
        const auto lookup = [&](const std::string& name) {
          const auto& [file, info] = bundle.tensors().at(name);
          return StoredTensor{file->bytes(*info).data(), kernel_type(info->dtype, name)};
        };
        for (const auto& part : materialize_parts(man.modules[m], man.represented_tasks(), t, lookup, ea.data(),
                                                  eb.data(), kernels::ElemType::f32))
          for (i64 i = 0; i < part.rows; ++i)
            for (i64 j = 0; j < part.cols; ++j)
              kernels::store_rounded(part.out, i * part.cols + j, part.out_type, kernels::materialize_element(part, i, j));
        ASSERT_EQ(a[m], ea) << dir << " module " << m << " task " << t;
        ASSERT_EQ(b[m], eb) << dir << " module " << m << " task " << t;
        for (std::size_t i = 0; i < a[m].size(); ++i) {
          ASSERT_EQ(a16[m][i], kernels::f32_to_bf16_bits(a[m][i]));
          ASSERT_EQ(ah[m][i], kernels::f32_to_f16_bits(a[m][i]));
        }
        for (std::size_t i = 0; i < b[m].size(); ++i) {
          ASSERT_EQ(b16[m][i], kernels::f32_to_bf16_bits(b[m][i]));
          ASSERT_EQ(bh[m][i], kernels::f32_to_f16_bits(b[m][i]));
        }
      }
      // The last module and the first, in that order, into other buffers.
      const std::vector<i64> some = {static_cast<i64>(nm) - 1, 0};
      std::vector<float> la(a.back().size()), lb(b.back().size()), fa(a[0].size()), fb(b[0].size());
      const std::vector<void*> sa = {la.data(), fa.data()}, sb = {lb.data(), fb.data()};
      rb.materialize(t, some, DType::F32, sa, sb);
      EXPECT_EQ(la, a.back());
      EXPECT_EQ(lb, b.back());
      EXPECT_EQ(fa, a[0]);
      EXPECT_EQ(fb, b[0]);
    }
  }
  EXPECT_EQ(seen.size(), 4u);  // rmm, rank, shared_rows, shared
  ResidentBundle rb(bundles[0], Device::cpu);
  std::vector<float> x(4096), y(4096);
  const std::vector<void*> one = {x.data()}, two = {y.data()}, none = {nullptr};
  const std::vector<i64> first = {0}, outside = {99};
  EXPECT_THROW(rb.materialize(4, first, DType::F32, one, two), usage_error);
  EXPECT_THROW(rb.materialize(0, outside, DType::F32, one, two), usage_error);
  EXPECT_THROW(rb.materialize(0, first, DType::F64, one, two), usage_error);
  EXPECT_THROW(rb.materialize(0, first, DType::F32, none, two), usage_error);
  EXPECT_THROW(rb.materialize(0, {}, DType::F32, one, two), usage_error);  // every module, one buffer
  EXPECT_THROW(ResidentBundle(tmp / "family" / "task0", Device::cpu), io_error);
}

TEST(StoreAllocation, BudgetChoiceMatchesExhaustiveSearchOnConvexOptions) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(0.1, 1.0);
  std::vector<ModuleOptions> modules(3);
  for (auto& m : modules) {
    m.rank_unit = 10 + 5 * (&m - modules.data());
    m.task_weight = {1.0, 0.5};
    for (int t = 0; t < 2; ++t) {
      std::vector<double> s;
      double v = u(rng);
      for (int k = 0; k < 3; ++k) s.push_back(v), v *= u(rng);
      m.sigma_sq.push_back(s);
    }
  }
  for (const double budget : {0.0, 15.0, 40.0, 75.0, 120.0, 500.0}) {
    const auto got = allocate_budget(modules, budget);
    double used = 0, err = 0;
    for (const auto& c : got) used += c.numbers, err += c.error;
    EXPECT_LE(used, budget + 1e-9);
    // Exhaustive: each of 6 tasks keeps 0..3 directions.
    double best = INFINITY;
    for (int code = 0; code < 4096; ++code) {
      double n = 0, e = 0;
      int c = code;
      for (int m = 0; m < 3; ++m)
        for (int t = 0; t < 2; ++t) {
          const int k = c % 4;
          c /= 4;
          n += k * modules[m].rank_unit;
          for (int j = k; j < 3; ++j) e += modules[m].task_weight[t] * modules[m].sigma_sq[t][j];
        }
      if (n <= budget) best = std::min(best, e);
    }
    // Greedy by value per number is optimal up to the last direction that does not fit.
    EXPECT_LE(err, best + 0.35) << budget;
    if (budget == 0.0 || budget == 500.0) EXPECT_NEAR(err, best, 1e-12);
  }
}

TEST(StoreAllocation, FixedOptionTakenWhereItIsWorthItsNumbers) {
  ModuleOptions m;
  m.rank_unit = 10;
  m.task_weight = {1.0};
  m.sigma_sq = {{1.0, 1.0, 1.0, 1.0}};  // flat: truncation loses 1 per 10 numbers saved
  m.fixed = {{20, 0.1, 0.1}};           // 20 numbers for error 0.1
  const auto c = allocate_budget({m}, 20);
  EXPECT_EQ(c[0].fixed, 0);
  EXPECT_DOUBLE_EQ(c[0].error, 0.1);
  const auto d = allocate_budget({m}, 19);
  EXPECT_EQ(d[0].fixed, -1);
  EXPECT_EQ(d[0].kept, std::vector<i64>{1});
  const auto e = allocate_max_error({m}, 0.5);  // √(0.1 / 4) ≤ 0.5 → the fixed option
  EXPECT_EQ(e[0].fixed, 0);
}

// A store worker's thread count (what its BLAS calls use) holds while the guard lives and is
// restored after: two workers each running OpenBLAS on every core spin against each other.
TEST(StoreThreads, AWorkersThreadCountHoldsForItsGuardAndIsRestored) {
  const int before = omp_get_max_threads();
  {
    const ThreadsOfThisThread one(1);
    EXPECT_EQ(omp_get_max_threads(), 1);
    {
      const ThreadsOfThisThread unchanged(0);
      EXPECT_EQ(omp_get_max_threads(), 1);
    }
    EXPECT_EQ(omp_get_max_threads(), 1);
  }
  EXPECT_EQ(omp_get_max_threads(), before);
}

}  // namespace
}  // namespace revmerge
