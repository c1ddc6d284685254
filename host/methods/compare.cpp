// revmerge compare: RMM at several P and the classic methods on one adapter set, measured per
// task against the task's own adapter.
#include "revmerge/compare.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <random>
#include <set>
#include <vector>

#include "core/atomic_output.hpp"
#include "methods/adapter_set.hpp"
#include "methods/lowrank/refactor.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/store.hpp"

namespace fs = std::filesystem;

namespace revmerge {
namespace {

using i64 = std::int64_t;

// The tasks' own factors, module by module (plan order), read once for every row.
std::vector<std::vector<TaskFactors>> read_tasks(const AdapterSet& set) {
  std::vector<std::vector<TaskFactors>> all;
  for (const auto& pm : set.plan) all.push_back(read_module_factors(set, pm));
  return all;
}

// Per task √(Σ squared errors / Σ squared norms) over the modules.
CompareRow make_row(const std::string& label, double storage, const std::vector<double>& num,
                    const std::vector<double>& den) {
  CompareRow row;
  row.label = label;
  row.storage = storage;
  for (std::size_t t = 0; t < num.size(); ++t)
    row.task_error.push_back(den[t] > 0 ? std::sqrt(num[t] / den[t]) : 0);
  return row;
}

CompareRow measure_adapter(const std::string& label, const fs::path& merged, const AdapterSet& set,
                           const std::vector<std::vector<TaskFactors>>& tasks) {
  const PeftAdapter out(merged);
  const auto n = set.adapters.size();
  std::vector<double> num(n, 0.0), den(n, 0.0);
  double stored = 0, raw = 0;
  for (std::size_t m = 0; m < set.plan.size(); ++m) {
    const auto& pm = set.plan[m];
    const auto* om = out.find(pm.path);
    if (!om) throw format_error(merged.string() + ": module '" + pm.path + "' missing");
    const auto a = out.read_a(*om), b = out.read_b(*om);
    stored += double(om->rank) * double(pm.in + pm.out);
    for (std::size_t t = 0; t < n; ++t) {
      const auto& tm = tasks[m][t];
      raw += double(tm.rank) * double(pm.in + pm.out);
      num[t] += lowrank_norm_sq({{b, a, om->rank, om->scale}, {tm.b, tm.a, tm.rank, -tm.scale}},
                                pm.out, pm.in);
      den[t] += lowrank_norm_sq({{tm.b, tm.a, tm.rank, tm.scale}}, pm.out, pm.in);
    }
  }
  return make_row(label, stored / raw, num, den);
}

CompareRow measure_bundle(const std::string& label, const BundleManifest& m) {
  const auto n = m.tasks.size();
  std::vector<double> num(n, 0.0), den(n, 0.0);
  for (const auto& mod : m.modules)
    for (std::size_t t = 0; t < n; ++t) {
      const double e = mod.delta_error[t] * mod.delta_norm[t];
      num[t] += e * e;
      den[t] += mod.delta_norm[t] * mod.delta_norm[t];
    }
  return make_row(label, m.storage_ratio, num, den);
}

// The budgeted store's rows at each storage, in the order they are printed.
struct StoreRow {
  const char* label;
  StoreMethod method;
  std::vector<Representation> representations;  // empty: every one
};
const StoreRow kStoreRows[] = {
    {"rank", StoreMethod::rank, {}},
    {"rmm, P per module and side", StoreMethod::automatic, {Representation::rmm}},
    {"shared bases", StoreMethod::automatic, {Representation::shared_rows, Representation::shared}},
    {"auto", StoreMethod::automatic, {}},
};

std::string mode_name(const CompareMethod& m) {
  if (m.method == ClassicMethod::cat || m.method == ClassicMethod::svd) return "";
  return m.mode == LoraMergeMode::separate ? " (separate)" : " (combined)";
}

}  // namespace

CompareReport compare_methods(const CompareOptions& o) {
  const i64 n = static_cast<i64>(o.tasks.size());
  if (n < 2) throw usage_error("compare needs at least 2 adapters");
  auto basis = o.basis_sizes;
  if (basis.empty()) basis = {1, std::max<i64>(1, n / 4), std::max<i64>(1, n / 2), n - 1};
  std::sort(basis.begin(), basis.end());
  basis.erase(std::unique(basis.begin(), basis.end()), basis.end());
  auto methods = o.methods;
  if (methods.empty()) {
    for (const auto mode : {LoraMergeMode::separate, LoraMergeMode::combined})
      for (const auto m : {ClassicMethod::task_arithmetic, ClassicMethod::ties,
                           ClassicMethod::dare_linear, ClassicMethod::dare_ties,
                           ClassicMethod::magnitude_prune})
        methods.push_back({m, mode});
    methods.push_back({ClassicMethod::svd, LoraMergeMode::combined});
    methods.push_back({ClassicMethod::cat, LoraMergeMode::combined});
  }
  const auto set = open_adapter_set(o.tasks);
  const auto tasks = read_tasks(set);

  // Scratch space for the merged outputs, removed on the way out.
  std::random_device rd;
  const auto scratch = fs::temp_directory_path() / ("revmerge-compare-" + std::to_string(rd()));
  struct Cleanup {
    fs::path p;
    ~Cleanup() { std::error_code ec; fs::remove_all(p, ec); }
  } cleanup{scratch};
  fs::create_directories(scratch);

  CompareReport report;
  for (const auto& t : o.tasks) report.tasks.push_back(t.name);
  const std::size_t rows =
      basis.size() + methods.size() + (o.stores ? std::size(kStoreRows) * basis.size() : 0);
  auto starting = [&](const std::string& label) {
    if (o.progress) o.progress(report.rows.size(), rows, label);
  };
  for (const auto p : basis) {
    starting("rmm P=" + std::to_string(p));
    RmmMergeOptions r;
    r.tasks = o.tasks;
    r.basis = p;
    r.out = scratch / ("rmm-" + std::to_string(p));
    r.threads = o.threads;
    r.device = o.device;
    r.gpu = o.gpu;
    report.rows.push_back(measure_bundle("rmm P=" + std::to_string(p), merge_rmm(r)));
  }
  for (std::size_t i = 0; i < methods.size(); ++i) {
    const auto& m = methods[i];
    ClassicMergeOptions c;
    c.method = m.method;
    c.mode = m.mode;
    c.tasks = o.tasks;
    const bool divides = m.method == ClassicMethod::ties || m.method == ClassicMethod::dare_ties;
    const bool separate = m.mode == LoraMergeMode::separate && m.method != ClassicMethod::cat &&
                          m.method != ClassicMethod::svd;
    const double mean = divides ? 1.0 : separate ? 1.0 / double(n * n) : 1.0 / double(n);
    c.weights = o.weights.empty() ? std::vector<double>(n, mean) : o.weights;
    const bool prunes = divides || m.method == ClassicMethod::dare_linear ||
                        m.method == ClassicMethod::magnitude_prune;
    if (prunes) c.densities = {o.density};
    c.seed = o.seed;
    c.threads = o.threads;
    c.out = scratch / ("classic-" + std::to_string(i));
    const auto label = to_string(m.method) + mode_name(m);
    starting(label);
    try {
      merge_classic(c);
    } catch (const shape_error&) {
      // Separate merging pairs the factors' rows; adapters of different ranks cannot be paired.
      report.rows.push_back({label, NAN, std::vector<double>(n, NAN), NAN, c.weights,
                             "the tasks' ranks differ, and separate merging pairs equal-rank factors"});
      continue;
    }
    report.rows.push_back(measure_adapter(label, c.out, set, tasks));
    report.rows.back().weights = c.weights;
  }
  // The budgeted store at each RMM row's storage: each representation allocated alone (auto
  // restricted to it), then auto weighing them all — so auto can be read against the best of them.
  if (o.stores)
    for (std::size_t b = 0; b < basis.size(); ++b) {
      const double storage = std::min(report.rows[b].storage, 1.0);
      for (std::size_t k = 0; k < std::size(kStoreRows); ++k) {
        const auto& kind = kStoreRows[k];
        const std::string label = std::string(kind.label) + " at rmm P=" + std::to_string(basis[b]) + "'s storage";
        starting(label);
        StoreMergeOptions s;
        s.tasks = o.tasks;
        s.method = kind.method;
        s.representations = kind.representations;
        s.storage.fraction = storage;
        s.out = scratch / ("store-" + std::to_string(b) + "-" + std::to_string(k));
        s.threads = o.threads;
        s.device = o.device;
        s.gpu = o.gpu;
        report.rows.push_back(measure_bundle(label, merge_store(s)));
      }
    }
  if (o.progress) o.progress(rows, rows, "");
  for (auto& row : report.rows) {
    if (!row.note.empty()) continue;
    double s = 0;
    for (const auto e : row.task_error) s += e;
    row.mean_error = s / double(n);
  }
  return report;
}

}  // namespace revmerge
