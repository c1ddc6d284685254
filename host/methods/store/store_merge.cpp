// revmerge merge --method auto | rank: measure every module's options (each task's singular
// values; RMM with a basis size per side; a row basis shared by the tasks), allocate the storage
// budget across modules, then read the adapters again and write each module in the
// representation it was given (bundle version 2).
#include "revmerge/store.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <string>

#include "backend/backend.hpp"
#include "backend/registry.hpp"
#include "core/atomic_output.hpp"
#include "core/interrupt.hpp"
#include "core/memory_info.hpp"
#include "methods/adapter_set.hpp"
#include "methods/recipe.hpp"
#include "methods/rmm_module.hpp"
#include "methods/store/allocation.hpp"
#include "methods/store/parallel_tasks.hpp"
#include "methods/store/rmm_sides.hpp"
#include "methods/store/shared_rows.hpp"
#include "methods/store/truncation.hpp"
#include "revmerge/error.hpp"
#include "revmerge/version.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

const char* method_name(StoreMethod m) { return m == StoreMethod::rank ? "rank" : "auto"; }

void check_options(const StoreMergeOptions& o) {
  const auto n = static_cast<i64>(o.tasks.size());
  const std::string method = std::string("--method ") + method_name(o.method);
  if (n < 2)
    throw usage_error(method + " needs at least 2 adapters to store together, got " + std::to_string(n));
  check_task_names(o.tasks);
  if (o.out.empty()) throw usage_error("--out: no bundle folder given");
  if (o.dtype && (!is_float_dtype(*o.dtype) || *o.dtype == DType::F64))
    throw usage_error("--dtype: a bundle stores f32, f16 or bf16");
  const bool budget = o.storage.fraction || o.storage.bytes;
  if (budget == o.max_error.has_value())
    throw usage_error(method + ": give either --storage (a budget) or --max-error (an error bound)");
  if (o.storage.fraction && !(*o.storage.fraction > 0 && *o.storage.fraction <= 1))
    throw usage_error("--storage " + std::to_string(*o.storage.fraction) +
                      ": a fraction of the adapters' numbers is in (0, 1] (1 keeps every task exactly)");
  if (o.storage.bytes && *o.storage.bytes == 0) throw usage_error("--storage: 0 bytes stores nothing");
  if (o.max_error && !(*o.max_error >= 0 && *o.max_error < 1))
    throw usage_error("--max-error " + std::to_string(*o.max_error) +
                      ": a relative delta error is in [0, 1) (1 is what storing nothing gives)");
  if (o.method == StoreMethod::rank && !o.rmm_basis.empty())
    throw usage_error("--basis: --method rank stores no RMM modules (use --method auto)");
  if (o.method == StoreMethod::rank && !o.representations.empty())
    throw usage_error("--representations: --method rank stores truncations only (use --method auto)");
  for (const auto p : o.rmm_basis)
    if (p < 1 || p > n - 1)
      throw usage_error("--basis " + std::to_string(p) + " is outside 1 .. n − 1 = " + std::to_string(n - 1));
}

// Whether `auto` weighs representation r (a task's own truncation always).
bool weighs(const StoreMergeOptions& o, Representation r) {
  if (o.method == StoreMethod::rank) return r == Representation::rank;
  return o.representations.empty() || r == Representation::rank ||
         std::find(o.representations.begin(), o.representations.end(), r) != o.representations.end();
}

std::vector<i64> rmm_candidates(const StoreMergeOptions& o) {
  if (!weighs(o, Representation::rmm)) return {};
  const auto n = static_cast<i64>(o.tasks.size());
  auto p = o.rmm_basis;
  // Every P up to 8, then powers of 2: each costs the Grams of its differences, not an RMM.
  if (p.empty())
    for (i64 q = 1; q < n; q = q < 8 ? q + 1 : 2 * q) p.push_back(q);
  std::sort(p.begin(), p.end());
  p.erase(std::unique(p.begin(), p.end()), p.end());
  return p;
}

// RMM's shape limits (check_rmm_shape): a module outside them is only ever truncated.
bool rmm_fits(const PlannedModule& pm, i64 n) { return n <= 64 && pm.rank <= 256; }

// RMM of one module at basis p from the tasks' factors (padded stacks, scale folded into B).
RmmModuleResult run_rmm(Backend& be, const PlannedModule& pm, const std::vector<TaskFactors>& f,
                        i64 p, DType storage) {
  const i64 n = static_cast<i64>(f.size()), r = pm.rank;
  std::vector<float> a(static_cast<std::size_t>(n * r * pm.in), 0.0f);
  std::vector<float> b(static_cast<std::size_t>(n * pm.out * r), 0.0f);
  for (i64 t = 0; t < n; ++t) {
    const auto& tf = f[t];
    std::copy(tf.a.begin(), tf.a.end(), a.begin() + t * r * pm.in);
    for (i64 o = 0; o < pm.out; ++o)
      for (i64 k = 0; k < tf.rank; ++k)
        b[(t * pm.out + o) * r + k] = static_cast<float>(tf.scale * tf.b[o * tf.rank + k]);
  }
  return with_module_context(pm.path, [&] {
    return rmm_module(be, {n, r, pm.in, pm.out, p}, a.data(), b.data(), storage, {});
  });
}

// Squared singular values of task t's delta s·B·A, descending.
std::vector<double> delta_sigma_sq(const PlannedModule& pm, const TaskFactors& f) {
  return with_module_context(pm.path, [&] { return task_truncation(f, pm.out, pm.in).sigma_sq; });
}

// Numbers the tasks' own factors of a module hold.
double raw_numbers(const PlannedModule& pm) {
  double raw = 0;
  for (const auto r : pm.task_ranks) raw += double(r) * double(pm.in + pm.out);
  return raw;
}

// What pass 1 keeps of a module: each task's spectrum, and for each fixed-size option — RMM at
// a pair (p_A, p_B), or a shared row basis of K directions — its numbers, per-task squared
// absolute errors and worst relative error.
struct Measured {
  std::vector<std::vector<double>> sigma_sq;
  struct Option {
    Representation kind;
    std::array<i64, 2> p;  // rmm
    i64 k;                 // shared_rows
    double numbers;
    std::vector<double> error_sq;
    double worst;
  };
  std::vector<Option> options;
};

// The largest relative error among the tasks.
double worst_relative(const std::vector<double>& error_sq, const std::vector<double>& norm_sq) {
  double w = 0;
  for (std::size_t t = 0; t < error_sq.size(); ++t)
    w = std::max(w, norm_sq[t] > 0 ? std::sqrt(error_sq[t] / norm_sq[t]) : 0.0);
  return w;
}

// Every side at every basis size in {0} ∪ candidates, from one RMM run at the largest (its first
// p directions are RMM at p: the same eigenvectors, kept in descending order); then every pair of
// them, its errors in closed form (rmm_sides.hpp). Pairs storing as much as the tasks' own
// factors are left out (keeping the factors is exact at that size).

Measured measure(Backend* be, const PlannedModule& pm, const std::vector<TaskFactors>& f,
                 const std::vector<i64>& candidates, DType storage, int threads, bool shared_basis) {
  Measured m;
  m.sigma_sq.resize(f.size());
  parallel_tasks(static_cast<long>(f.size()), threads, [&](long t) { m.sigma_sq[t] = delta_sigma_sq(pm, f[t]); });
  const i64 n = static_cast<i64>(f.size()), r = pm.rank;
  std::vector<double> norm_sq;
  for (const auto& s : m.sigma_sq) {
    double v = 0;
    for (const double x2 : s) v += x2;
    norm_sq.push_back(v);
  }
  if (shared_basis) {
    // A row basis shared by the tasks, K ≤ r directions (a task reverts at rank r).
    const auto shared = with_module_context(pm.path, [&] { return shared_rows(f, pm.out, pm.in); });
    for (i64 k = 1; k <= std::min(r, shared.total_rank); ++k) {
    const double numbers = double(k) * double(pm.in + n * pm.out);
    if (numbers >= raw_numbers(pm)) break;
    Measured::Option c{Representation::shared_rows, {0, 0}, k, numbers, {}, 0};
      for (i64 t = 0; t < n; ++t) c.error_sq.push_back(shared.error_sq[t][k - 1]);
      c.worst = worst_relative(c.error_sq, norm_sq);
      m.options.push_back(std::move(c));
    }
  }
  if (!be || !rmm_fits(pm, n) || candidates.empty()) return m;
  const auto x = side_grams(pm, f, threads);
  const i64 largest = candidates.back();
  const auto res = run_rmm(*be, pm, f, largest, storage);
  std::vector<i64> ps{0};  // 0: the mean alone
  ps.insert(ps.end(), candidates.begin(), candidates.end());
  std::vector<SideDifference> sides[2];
  for (int s = 0; s < 2; ++s)
    sides[s] = side_differences(pm, x, s, s == 0 ? res.a : res.b, largest, ps, threads, true);
  for (const auto& a : sides[0])
    for (const auto& b : sides[1]) {
      const double numbers = side_numbers(pm.in, r, n, a.p) + side_numbers(pm.out, r, n, b.p);
      if (numbers >= raw_numbers(pm)) continue;
      Measured::Option c{Representation::rmm, {a.p, b.p}, 0, numbers, delta_error_sq(x, a, b, r), 0};
      c.worst = worst_relative(c.error_sq, norm_sq);
      m.options.push_back(std::move(c));
    }
  return m;
}

BundleModule module_entry(const PlannedModule& pm) {
  BundleModule bm;
  bm.path = pm.path;
  bm.layer = pm.layer;
  bm.name = pm.name;
  bm.in = pm.in;
  bm.out = pm.out;
  bm.rank = pm.rank;
  bm.task_ranks = pm.task_ranks;
  return bm;
}


// Writes module pm as RMM at basis sizes p (A, B side; 0: the mean alone) and returns its
// manifest entry: each side from an RMM run at its own p (at 1 for the mean alone), the errors
// measured on what is stored.
BundleModule store_rmm(Backend& be, const PlannedModule& pm, const std::vector<TaskFactors>& f,
                       std::array<i64, 2> p, DType storage, SafetensorsWriter& writer, int threads) {
  const i64 n = static_cast<i64>(f.size()), r = pm.rank;
  const i64 run_a = std::max<i64>(p[0], 1), run_b = std::max<i64>(p[1], 1);
  const auto res_a = run_rmm(be, pm, f, run_a, storage);
  const auto res_b = run_b == run_a ? res_a : run_rmm(be, pm, f, run_b, storage);
  const RmmSide* side[2] = {&res_a.a, &res_b.b};
  const i64 run[2] = {run_a, run_b};
  const auto x = side_grams(pm, f, threads);
  SideDifference d[2];
  auto bm = module_entry(pm);
  bm.representation = Representation::rmm;
  bm.basis = p;
  for (int s = 0; s < 2; ++s) {
    const char* name = s == 0 ? "lora_A" : "lora_B";
    writer.write_f32(bundle_tensor_name(pm.path, name, "mean"), side[s]->mean);
    if (p[s] > 0) {
      writer.write_f32(bundle_tensor_name(pm.path, name, "basis"), side[s]->basis);
      writer.write_f32(bundle_tensor_name(pm.path, name, "coef"), side[s]->coef);
    }
    d[s] = std::move(side_differences(pm, x, s, *side[s], run[s], {p[s]}, threads, false).front());
    auto& fe = s == 0 ? bm.factor_error_a : bm.factor_error_b;
    for (i64 t = 0; t < n; ++t)
      fe.push_back(x.x_sq[s][t] > 0 ? std::sqrt(d[s].d_sq[t] / x.x_sq[s][t]) : 0.0);
  }
  bm.spectrum_a = res_a.a.spectrum;
  bm.spectrum_b = res_b.b.spectrum;
  const auto err = delta_error_sq(x, d[0], d[1], r), norm = delta_norm_sq(x);
  for (i64 t = 0; t < n; ++t) {
    bm.delta_norm.push_back(std::sqrt(norm[t]));
    bm.delta_error.push_back(norm[t] > 0 ? std::sqrt(err[t] / norm[t]) : 0.0);
  }
  bm.storage_ratio = double(bm.stored_numbers(n)) / raw_numbers(pm);
  return bm;
}

// Writes module pm as each task's own truncation to kept[t] directions: A' stacked as Σk × in,
// B' as out × Σk. The errors are measured on the rounded factors through small Grams.
BundleModule store_rank(const PlannedModule& pm, const std::vector<TaskFactors>& f,
                        const std::vector<i64>& kept, DType storage, SafetensorsWriter& writer,
                        int threads) {
  const i64 n = static_cast<i64>(f.size());
  std::vector<i64> first(f.size(), 0);  // task t's rows / columns start at first[t]
  i64 total = 0;
  for (i64 t = 0; t < n; ++t) first[t] = total, total += kept[t];
  auto bm = module_entry(pm);
  bm.representation = Representation::rank;
  bm.kept_ranks = kept;
  bm.delta_norm.resize(f.size());
  bm.delta_error.resize(f.size());
  std::vector<float> a_all(static_cast<std::size_t>(total * pm.in));
  std::vector<float> b_all(static_cast<std::size_t>(pm.out * total));
  parallel_tasks(n, threads, [&](long t) {
    const auto& tf = f[t];
    const i64 k = kept[t], at = first[t];
    const auto tt = with_module_context(pm.path, [&] { return task_truncation(tf, pm.out, pm.in); });
    std::vector<float> a, b;
    truncated_factors(tt, tf, k, b, a);
    round_to_storage(a, storage);
    round_to_storage(b, storage);
    const double norm_sq = tt.norm_sq, err_sq = truncation_error_sq(tt, tf, b, a, k);
    bm.delta_norm[t] = std::sqrt(norm_sq);
    bm.delta_error[t] = norm_sq > 0 ? std::sqrt(err_sq / norm_sq) : 0.0;
    std::copy(a.begin(), a.end(), a_all.begin() + at * pm.in);
    for (i64 o = 0; o < pm.out; ++o)
      std::copy(b.begin() + o * k, b.begin() + (o + 1) * k, b_all.begin() + o * total + at);
  });
  if (total > 0) {
    writer.write_f32(bundle_tensor_name(pm.path, "lora_A", "factors"), a_all);
    writer.write_f32(bundle_tensor_name(pm.path, "lora_B", "factors"), b_all);
  }
  bm.storage_ratio = double(bm.stored_numbers(n)) / raw_numbers(pm);
  return bm;
}

// Writes module pm as a row basis of k directions shared by its tasks (Vᵀ, then the B̃_i side
// by side); the errors measured on the rounded factors.
BundleModule store_shared(const PlannedModule& pm, const std::vector<TaskFactors>& f, i64 k,
                          DType storage, SafetensorsWriter& writer, int threads) {
  const i64 n = static_cast<i64>(f.size());
  const auto shared = with_module_context(pm.path, [&] { return shared_rows(f, pm.out, pm.in); });
  std::vector<float> basis_t;
  std::vector<std::vector<float>> task_b;
  shared_rows_factors(shared, f, k, storage, basis_t, task_b);
  auto bm = module_entry(pm);
  bm.representation = Representation::shared_rows;
  bm.shared_rank = k;
  bm.delta_norm.resize(f.size());
  bm.delta_error.resize(f.size());
  std::vector<float> b_all(static_cast<std::size_t>(pm.out * n * k));
  parallel_tasks(n, threads, [&](long t) {
    const auto tt = task_truncation(f[t], pm.out, pm.in);
    const double err_sq = truncation_error_sq(tt, f[t], task_b[t], basis_t, k);
    bm.delta_norm[t] = std::sqrt(tt.norm_sq);
    bm.delta_error[t] = tt.norm_sq > 0 ? std::sqrt(err_sq / tt.norm_sq) : 0.0;
    for (i64 o = 0; o < pm.out; ++o)
      std::copy(task_b[t].begin() + o * k, task_b[t].begin() + (o + 1) * k, b_all.begin() + (o * n + t) * k);
  });
  writer.write_f32(bundle_tensor_name(pm.path, "lora_A", "shared"), basis_t);
  writer.write_f32(bundle_tensor_name(pm.path, "lora_B", "shared"), b_all);
  bm.storage_ratio = double(bm.stored_numbers(n)) / raw_numbers(pm);
  return bm;
}

std::vector<TensorSpec> tensor_specs(const std::vector<PlannedModule>& plan,
                                     const std::vector<ModuleChoice>& choice,
                                     const std::vector<Measured>& measured, i64 n, DType storage) {
  std::vector<TensorSpec> specs;
  for (std::size_t m = 0; m < plan.size(); ++m) {
    const auto& pm = plan[m];
    if (choice[m].fixed >= 0 && measured[m].options[choice[m].fixed].kind == Representation::shared_rows) {
      const i64 k = measured[m].options[choice[m].fixed].k;
      specs.push_back({bundle_tensor_name(pm.path, "lora_A", "shared"), storage, {k, pm.in}});
      specs.push_back({bundle_tensor_name(pm.path, "lora_B", "shared"), storage, {pm.out, n * k}});
      continue;
    }
    if (choice[m].fixed >= 0) {
      const auto p = measured[m].options[choice[m].fixed].p;
      for (int s = 0; s < 2; ++s) {
        const char* side = s == 0 ? "lora_A" : "lora_B";
        const i64 rows = s == 0 ? pm.in : pm.out;
        specs.push_back({bundle_tensor_name(pm.path, side, "mean"), storage, {rows, pm.rank}});
        if (p[s] == 0) continue;
        specs.push_back({bundle_tensor_name(pm.path, side, "basis"), storage, {rows, pm.rank, p[s]}});
        specs.push_back({bundle_tensor_name(pm.path, side, "coef"), storage, {rows, p[s], n}});
      }
      continue;
    }
    i64 total = 0;
    for (const auto k : choice[m].kept) total += k;
    if (total == 0) continue;
    specs.push_back({bundle_tensor_name(pm.path, "lora_A", "factors"), storage, {total, pm.in}});
    specs.push_back({bundle_tensor_name(pm.path, "lora_B", "factors"), storage, {pm.out, total}});
  }
  return specs;
}

// The inputs' factor bytes and their dtype (the widest: bf16 < f16 < f32 < f64), as merge_rmm
// reports them.
std::pair<std::uint64_t, DType> input_factors(const AdapterSet& set) {
  const auto order = [](DType t) { return t == DType::F64 ? 3 : t == DType::F32 ? 2 : t == DType::F16 ? 1 : 0; };
  std::uint64_t bytes = 0;
  DType widest = DType::BF16;
  for (const auto& pm : set.plan)
    for (std::size_t t = 0; t < pm.per_task.size(); ++t)
      for (const auto* key : {&pm.per_task[t]->key_a, &pm.per_task[t]->key_b}) {
        const auto& info = set.adapters[t]->weights().at(*key);
        bytes += info.nbytes();
        if (order(info.dtype) > order(widest)) widest = info.dtype;
      }
  return {bytes, widest};
}

RecipeRecord store_record(const StoreMergeOptions& o, DType storage, const std::vector<i64>& candidates) {
  RecipeRecord r{method_name(o.method), {}, recipe_inputs(o.tasks)};
  if (o.storage.fraction) r.parameters.emplace_back("storage", std::to_string(*o.storage.fraction));
  if (o.storage.bytes) r.parameters.emplace_back("storage", std::to_string(*o.storage.bytes) + " bytes");
  if (o.max_error) r.parameters.emplace_back("max_error", std::to_string(*o.max_error));
  std::string ps;
  for (const auto p : candidates) {
    if (!ps.empty()) ps += ',';
    ps += std::to_string(p);
  }
  if (!candidates.empty()) r.parameters.emplace_back("basis", ps);
  r.parameters.emplace_back("objective", "mean");
  r.parameters.emplace_back("dtype", std::string(dtype_name(storage)) + (o.dtype ? "" : " (not given: the inputs')"));
  return r;
}

}  // namespace

std::vector<Representation> parse_representations(const std::string& text, const std::string& option) {
  std::vector<Representation> out;
  std::size_t at = 0;
  while (at <= text.size()) {
    const auto comma = text.find(',', at);
    const auto name = text.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    if (name == "rmm") out.push_back(Representation::rmm);
    else if (name == "rank") out.push_back(Representation::rank);
    else if (name == "shared_rows") out.push_back(Representation::shared_rows);
    else throw usage_error(option + ": '" + name + "' is not a representation (rmm, rank, shared_rows)");
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

StorageBudget parse_storage_budget(const std::string& text, const std::string& option) {
  StorageBudget b;
  const auto bad = [&](const std::string& why) {
    return usage_error(option + " '" + text + "': " + why +
                       " (write a fraction of the adapters' numbers such as 0.25 or 25%, or a size "
                       "such as 2GiB)");
  };
  if (text.empty()) throw bad("empty");
  const bool percent = text.back() == '%';
  const auto number = percent ? text.substr(0, text.size() - 1) : text;
  const bool plain = !number.empty() && number.find_first_not_of("0123456789.") == std::string::npos;
  if (!plain) {
    b.bytes = parse_byte_size(text, option);
    return b;
  }
  double v = 0;
  try {
    std::size_t used = 0;
    v = std::stod(number, &used);
    if (used != number.size()) throw bad("not a number");
  } catch (const std::logic_error&) {
    throw bad("not a number");
  }
  if (percent) v /= 100;
  if (!(v > 0 && v <= 1))
    throw bad(v > 1 ? "a fraction above 1 (storing every task exactly costs 1; a size needs a unit)"
                    : "not above 0");
  b.fraction = v;
  return b;
}

BundleManifest merge_store(const StoreMergeOptions& o) {
  check_options(o);
  const auto set = open_adapter_set(o.tasks);
  const i64 n = static_cast<i64>(o.tasks.size());
  const auto [input_bytes, input_dtype] = input_factors(set);
  const DType storage = o.dtype ? *o.dtype : input_dtype == DType::F64 ? DType::F32 : input_dtype;
  const auto candidates = rmm_candidates(o);
  std::unique_ptr<Backend> be;
  if (!candidates.empty()) be = make_backend(o.device, {o.threads, o.gpu});

  double all_numbers = 0;
  for (const auto& pm : set.plan) all_numbers += raw_numbers(pm);
  double budget = 0;
  if (o.storage.fraction) budget = *o.storage.fraction * all_numbers;
  if (o.storage.bytes) {
    const double everything = all_numbers * double(dtype_size(storage));
    if (double(*o.storage.bytes) > everything)
      throw usage_error("--storage " + std::to_string(*o.storage.bytes) + " bytes: more than storing every " +
                        "task exactly takes (" + std::to_string(std::uint64_t(everything)) + " bytes in " +
                        std::string(dtype_name(storage)) + ")");
    budget = double(*o.storage.bytes) / double(dtype_size(storage));
  }

  // Pass 1: every module's options.
  const std::size_t steps = 2 * set.plan.size();
  std::vector<Measured> measured;
  std::vector<double> task_norm_sq(static_cast<std::size_t>(n), 0.0);
  for (std::size_t m = 0; m < set.plan.size(); ++m) {
    throw_if_interrupted("merge");
    const auto& pm = set.plan[m];
    if (o.progress) o.progress(m, steps, pm.path);
    const auto f = read_module_factors(set, pm);
    measured.push_back(measure(be.get(), pm, f, candidates, storage, o.threads,
                               weighs(o, Representation::shared_rows)));
    for (i64 t = 0; t < n; ++t)
      for (const double s : measured.back().sigma_sq[t]) task_norm_sq[t] += s;
  }
  // Each task's squared errors count relative to its whole delta (all modules), so the
  // objective is the mean over tasks of the squared relative delta error.
  std::vector<double> weight;
  for (const double d : task_norm_sq) weight.push_back(d > 0 ? 1.0 / d : 0.0);
  std::vector<ModuleOptions> options;
  for (std::size_t m = 0; m < set.plan.size(); ++m) {
    ModuleOptions mo;
    mo.sigma_sq = measured[m].sigma_sq;
    mo.task_weight = weight;
    mo.rank_unit = double(set.plan[m].in + set.plan[m].out);
    for (const auto& c : measured[m].options) {
      double e = 0;
      for (i64 t = 0; t < n; ++t) e += weight[t] * c.error_sq[t];
      mo.fixed.push_back({c.numbers, e, c.worst});
    }
    options.push_back(std::move(mo));
  }
  const auto choice = o.max_error ? allocate_max_error(options, *o.max_error) : allocate_budget(options, budget);

  // Pass 2: store each module as chosen.
  BundleManifest manifest;
  manifest.format_version = 2;
  manifest.method = method_name(o.method);
  manifest.basis = 0;
  manifest.dtype = storage;
  manifest.created_by = std::string("revmerge ") + REVMERGE_VERSION_STRING;
  manifest.backend = be ? be->name() + "; truncations on the host (BLAS / LAPACK, f64)"
                      : "host (BLAS / LAPACK, f64)";
  for (std::size_t t = 0; t < o.tasks.size(); ++t)
    manifest.tasks.push_back({o.tasks[t].name,
                              (o.tasks[t].origin.empty() ? o.tasks[t].adapter : o.tasks[t].origin).string(),
                              set.adapters[t]->config().base_model_name_or_path,
                              set.adapters[t]->config().task_type});
  const auto specs = tensor_specs(set.plan, choice, measured, n, storage);
  StagedDir staged(o.out, o.overwrite);
  SafetensorsWriter writer(staged.path() / kBundleTensorsName, specs,
                           {{"format", "revmerge-bundle"}, {"method", manifest.method}});
  double stored = 0;
  for (std::size_t m = 0; m < set.plan.size(); ++m) {
    throw_if_interrupted("merge");
    const auto& pm = set.plan[m];
    if (o.progress) o.progress(set.plan.size() + m, steps, pm.path);
    const auto f = read_module_factors(set, pm);
    const auto* option = choice[m].fixed >= 0 ? &measured[m].options[choice[m].fixed] : nullptr;
    auto bm = !option ? store_rank(pm, f, choice[m].kept, storage, writer, o.threads)
              : option->kind == Representation::shared_rows
                  ? store_shared(pm, f, option->k, storage, writer, o.threads)
                  : store_rmm(*be, pm, f, option->p, storage, writer, o.threads);
    stored += double(bm.stored_numbers(n));
    manifest.modules.push_back(std::move(bm));
  }
  if (o.progress) o.progress(steps, steps, "");
  manifest.storage_ratio = all_numbers > 0 ? stored / all_numbers : 0;
  manifest.input_bytes = input_bytes;
  for (const auto& spec : specs) manifest.stored_bytes += spec.nbytes();
  throw_if_interrupted("merge");
  writer.commit();
  write_file_atomic(staged.path() / kBundleManifestName, manifest_to_json(manifest), false);
  write_file_atomic(staged.path() / kRecipeName, recipe_text(o.recipe, store_record(o, storage, candidates)), false);
  staged.commit();
  return manifest;
}

}  // namespace revmerge
