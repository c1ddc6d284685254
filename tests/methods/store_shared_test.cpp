// The store's shared bases: a row basis for tasks from one initialisation, row and column bases
// for tasks sharing columns too, tasks of unequal ranks on the CPU and the deferred backend (bit
// for bit), and pass one keeping the bases pass two would find.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/deferred_backend.hpp"
#include "methods/adapter_writer.hpp"
#include "methods/store/shared_basis.hpp"
#include "methods/store/shared_rows.hpp"
#include "methods/store/store_modules.hpp"
#include "revmerge/error.hpp"
#include "revmerge/store.hpp"
#include "store_fixtures.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using namespace store_fixtures;

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

}  // namespace
}  // namespace revmerge
