// compare_methods: each row's per-task delta error against dense double arithmetic, and the
// rows that must agree (RMM at P = n − 1 is exact; task arithmetic combined is svd).
#include <gtest/gtest.h>

#include <cmath>

#include "methods/adapter_writer.hpp"
#include "revmerge/compare.hpp"
#include "revmerge/peft.hpp"

namespace revmerge {
namespace {

namespace fs = std::filesystem;

TEST(Compare, RowsMatchDenseArithmetic) {
  const auto ex = fs::path(REVMERGE_SOURCE_DIR) / "examples" / "adapters";
  CompareOptions o;
  for (const auto* t : {"chat", "math", "qa"}) o.tasks.push_back({t, ex / t});
  o.basis_sizes = {2, 1};
  o.methods = {{ClassicMethod::cat, LoraMergeMode::combined},
               {ClassicMethod::svd, LoraMergeMode::combined},
               {ClassicMethod::task_arithmetic, LoraMergeMode::combined}};
  o.device = Device::cpu;
  const auto r = compare_methods(o);
  ASSERT_EQ(r.rows.size(), 13u);
  EXPECT_EQ(r.rows[0].label, "rmm P=1");
  EXPECT_EQ(r.rows[1].label, "rmm P=2");
  for (const auto e : r.rows[1].task_error) EXPECT_LT(e, 1e-5);  // P = n − 1 is exact
  EXPECT_GT(r.rows[0].mean_error, 1e-3);
  const auto& cat = r.rows[2];
  EXPECT_EQ(cat.label, "cat");
  EXPECT_DOUBLE_EQ(cat.storage, 1.0);
  // cat with the default weights 1/n is the exact mean delta: measure it densely here.
  std::vector<PeftAdapter> adapters;
  for (const auto& t : o.tasks) adapters.emplace_back(t.adapter);
  std::vector<double> num(3, 0.0), den(3, 0.0);
  for (const auto& m : adapters[0].modules()) {
    std::vector<std::vector<double>> d;
    for (const auto& a : adapters) {
      const auto& mi = *a.find(m.path);
      d.push_back(test::dense_delta(a.read_a(mi), a.read_b(mi), mi.rank, mi.in, mi.out, mi.scale));
    }
    for (std::size_t j = 0; j < d[0].size(); ++j) {
      const double mean = (d[0][j] + d[1][j] + d[2][j]) / 3;
      for (int t = 0; t < 3; ++t) {
        num[t] += (mean - d[t][j]) * (mean - d[t][j]);
        den[t] += d[t][j] * d[t][j];
      }
    }
  }
  for (int t = 0; t < 3; ++t) EXPECT_NEAR(cat.task_error[t], std::sqrt(num[t] / den[t]), 1e-5);
  // Task arithmetic on the products, re-compressed, is the svd method.
  for (int t = 0; t < 3; ++t) EXPECT_NEAR(r.rows[3].task_error[t], r.rows[4].task_error[t], 1e-6);
  EXPECT_NEAR(r.rows[3].storage, 1.0 / 3, 1e-12);
  // The budgeted store at each RMM row's storage (P = 2 stores more than the adapters: 1): each
  // representation alone, then auto.
  const char* kinds[] = {"rank", "rmm, P per module and side", "shared bases", "auto"};
  for (int b = 0; b < 2; ++b)
    for (int k = 0; k < 4; ++k) {
      const auto& row = r.rows[5 + 4 * b + k];
      EXPECT_EQ(row.label, std::string(kinds[k]) + " at rmm P=" + std::to_string(b + 1) + "'s storage");
      EXPECT_LE(row.storage, std::min(r.rows[b].storage, 1.0) + 1e-12) << row.label;
    }
  // The objective the store minimises: the mean over tasks of the squared relative errors.
  const auto objective = [](const CompareRow& row) {
    double e = 0;
    for (const auto x : row.task_error) e += x * x;
    return e / double(row.task_error.size());
  };
  // auto weighs RMM at P = 1 and every representation alone among its options, so it is no
  // worse than any of them at that storage (1 %: the allocation is greedy).
  const auto& aut = r.rows[8];
  EXPECT_LE(objective(aut), 1.01 * objective(r.rows[0]));
  for (int k = 5; k < 8; ++k) EXPECT_LE(objective(aut), 1.01 * objective(r.rows[k])) << r.rows[k].label;
  EXPECT_GT(objective(r.rows[5]), 1.5 * objective(aut));  // truncations alone lose here: a real gap
  for (const auto e : r.rows[12].task_error) EXPECT_LT(e, 1e-5);  // everything stored: exact
}

}  // namespace
}  // namespace revmerge
