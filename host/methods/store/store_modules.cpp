// The budgeted store's work on one module: measuring its options (pass 1) and writing it in the
// representation it was given (pass 2).
#include "methods/store/store_modules.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>

#include "distributed/bytes.hpp"
#include "methods/rmm_module.hpp"
#include "revmerge/error.hpp"
#include "methods/store/parallel_tasks.hpp"
#include "methods/store/rmm_sides.hpp"
#include "methods/store/shared_basis.hpp"
#include "methods/store/shared_rows.hpp"
#include "methods/store/truncation.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// RMM's shape limits (check_rmm_shape): a module outside them is only ever truncated.
bool rmm_fits(const PlannedModule& pm, i64 n) { return n <= 64 && pm.rank <= 256; }

// RMM of one module at basis p from the tasks' factors (padded stacks, scale folded into B),
// with its spectra: its errors are pass 1's, so the error Grams are left out.
RmmModuleResult run_rmm(Backend& be, const PlannedModule& pm, const std::vector<TaskFactors>& f,
                        i64 p, DType storage) {
  const i64 n = static_cast<i64>(f.size()), r = pm.rank;
  std::vector<float> a, b;
  rmm_stacks(pm, f, a, b);
  return with_module_context(pm.path, [&] {
    return rmm_module(be, {n, r, pm.in, pm.out, p}, a.data(), b.data(), storage, {}, RmmTerms::spectrum);
  });
}

// The first p of `run` directions of a stored RMM tensor, `per_direction` numbers each within
// every group: the basis (m × r × run: groups of run, 1 number a direction) or the
// coefficients (m × run × n: groups of run × n, n numbers a direction).
std::vector<float> first_directions(const std::vector<float>& v, i64 run, i64 p, i64 per_direction) {
  if (p == run) return v;
  const i64 group = run * per_direction, groups = static_cast<i64>(v.size()) / group;
  std::vector<float> out(static_cast<std::size_t>(groups * p * per_direction));
  for (i64 g = 0; g < groups; ++g)
    std::copy_n(v.begin() + g * group, p * per_direction, out.begin() + g * p * per_direction);
  return out;
}

// Squared singular values of task t's delta s·B·A, descending.
std::vector<double> delta_sigma_sq(const PlannedModule& pm, const TaskFactors& f) {
  return with_module_context(pm.path, [&] { return task_truncation(f, pm.out, pm.in).sigma_sq; });
}


// The largest relative error among the tasks.
double worst_relative(const std::vector<double>& error_sq, const std::vector<double>& norm_sq) {
  double w = 0;
  for (std::size_t t = 0; t < error_sq.size(); ++t)
    w = std::max(w, norm_sq[t] > 0 ? std::sqrt(error_sq[t] / norm_sq[t]) : 0.0);
  return w;
}


// The basis sizes weighed for a shared basis of at most `limit` directions: every size up to 16,
// then steps of about 1/8 (each size's errors are closed-form, but every pair is an option the
// allocation weighs).
std::vector<i64> basis_sizes(i64 limit) {
  std::vector<i64> k;
  for (i64 x = 1; x <= limit; x += x < 16 ? 1 : x / 8) k.push_back(x);
  if (!k.empty() && k.back() != limit) k.push_back(limit);
  return k;
}

}  // namespace

std::uint64_t shared_basis_bytes(const SharedBasis& s) {
  std::uint64_t doubles = 0;
  for (const SharedRows* side : {&s.rows, &s.cols})
    doubles += side->to_basis.size() + side->gram.size() + side->norm_sq.size() + side->lambda.size();
  return doubles * sizeof(double);
}

std::string measured_bytes(const std::vector<Measured>& measured) {
  ByteWriter out;
  out.put<std::uint64_t>(measured.size());
  for (const auto& m : measured) {
    out.put<std::uint64_t>(m.sigma_sq.size());
    for (const auto& s : m.sigma_sq) out.put_doubles(s);
    out.put<std::uint64_t>(m.options.size());
    for (const auto& c : m.options) {
      out.put(static_cast<std::int32_t>(c.kind));
      out.put(c.p[0]), out.put(c.p[1]), out.put(c.k), out.put(c.numbers), out.put(c.worst);
      out.put_doubles(c.error_sq);
      out.put_doubles(c.factor_error[0]), out.put_doubles(c.factor_error[1]);
    }
  }
  return std::move(out.bytes());
}

std::vector<Measured> measured_from_bytes(const std::string& bytes) {
  ByteReader r(bytes, "a worker's measurements");
  std::vector<Measured> out(r.get<std::uint64_t>());
  for (auto& m : out) {
    m.sigma_sq.resize(r.get<std::uint64_t>());
    for (auto& s : m.sigma_sq) s = r.get_doubles();
    m.options.resize(r.get<std::uint64_t>());
    for (auto& c : m.options) {
      c.kind = static_cast<Representation>(r.get<std::int32_t>());
      c.p[0] = r.get<i64>(), c.p[1] = r.get<i64>(), c.k = r.get<i64>();
      c.numbers = r.get<double>(), c.worst = r.get<double>();
      c.error_sq = r.get_doubles();
      c.factor_error[0] = r.get_doubles(), c.factor_error[1] = r.get_doubles();
    }
  }
  return out;
}

double raw_numbers(const PlannedModule& pm) {
  double raw = 0;
  for (const auto r : pm.task_ranks) raw += double(r) * double(pm.in + pm.out);
  return raw;
}

// Every side at every basis size in {0} ∪ candidates, from one RMM run at the largest (its first
// p directions are RMM at p: the same eigenvectors, kept in descending order); then every pair of
// them, its errors in closed form (rmm_sides.hpp). Pairs storing as much as the tasks' own
// factors are left out (keeping the factors is exact at that size).

Measured measure(Backend* be, const PlannedModule& pm, const std::vector<TaskFactors>& f,
                 const std::vector<i64>& candidates, DType storage, int threads, bool shared_rows_on,
                 bool shared_on, SharedBasis* bases, Stream shared_stream, const StepTiming& timing) {
  Measured m;
  const i64 n = static_cast<i64>(f.size()), r = pm.rank;
  // RMM's run and its candidates first: on a GPU they run while the host measures the rest.
  std::vector<i64> ps{0};  // 0: the mean alone
  ps.insert(ps.end(), candidates.begin(), candidates.end());
  std::optional<RmmCandidateRun> rmm;
  if (be && rmm_fits(pm, n) && !candidates.empty())
    timed_step(timing, "pass 1: RMM run and candidates queued",
               [&] { with_module_context(pm.path, [&] { rmm.emplace(*be, pm, f, ps, storage); }); });
  // The shared bases need the module's stacked Grams; their diagonal blocks are then every
  // task's own Grams too. Without them each task's are made on the host.
  std::optional<ModuleGrams> grams;
  if (shared_rows_on || shared_on) {
    if (!be) throw std::logic_error("measure: the shared bases need a backend");
    grams = timed_step(timing, "pass 1: stacked Grams", [&] {
      return with_module_context(pm.path, [&] { return module_grams(*be, shared_stream, f, pm.out, pm.in); });
    });
  }
  m.sigma_sq.resize(f.size());
  timed_step(timing, "pass 1: truncations", [&] {
    parallel_tasks(static_cast<long>(f.size()), threads, [&](long t) {
      if (!grams) {
        m.sigma_sq[t] = delta_sigma_sq(pm, f[t]);
        return;
      }
      const auto& tf = f[t];
      m.sigma_sq[t] = with_module_context(pm.path, [&] {
        return task_truncation(tf, pm.out, pm.in, grams->block(grams->a, t, tf.rank),
                               grams->block(grams->b, t, tf.rank, tf.scale * tf.scale)).sigma_sq;
      });
    });
  });
  std::vector<double> norm_sq;
  for (const auto& s : m.sigma_sq) {
    double v = 0;
    for (const double x2 : s) v += x2;
    norm_sq.push_back(v);
  }
  if (grams) {
    auto shared = timed_step(timing, "pass 1: shared bases", [&] {
      return with_module_context(pm.path, [&] {
        return shared_on ? shared_basis(*be, shared_stream, f, *grams, pm.out, pm.in)
                         : SharedBasis{shared_rows(*be, shared_stream, f, grams->a, grams->b, pm.out, pm.in), {}};
      });
    });
    // A row basis shared by the tasks, K ≤ r directions (a task reverts at rank r).
    const auto& rows = shared.rows;
    for (i64 k = 1; shared_rows_on && k <= std::min(r, rows.total_rank); ++k) {
      const double numbers = double(k) * double(pm.in + n * pm.out);
      if (numbers >= raw_numbers(pm)) break;
      Measured::Option c{Representation::shared_rows, {0, 0}, k, numbers, {}, 0};
      for (i64 t = 0; t < n; ++t) c.error_sq.push_back(rows.error_sq[t][k - 1]);
      c.worst = worst_relative(c.error_sq, norm_sq);
      m.options.push_back(std::move(c));
    }
    // Both bases, (Kv, Ku) on a grid; each task keeps its rank in their coordinates.
    if (shared_on) {
      i64 total = 0;
      for (const auto& tf : f) total += tf.rank;
      const auto kv = basis_sizes(std::min(total, pm.in)), ku = basis_sizes(std::min(total, pm.out));
      const auto errors = timed_step(timing, "pass 1: shared bases' errors", [&] {
        return with_module_context(pm.path,
                                   [&] { return shared_basis_errors(*be, shared_stream, shared, f, kv, ku); });
      });
      for (std::size_t x = 0; x < kv.size(); ++x)
        for (std::size_t y = 0; y < ku.size(); ++y) {
          const double numbers = double(kv[x]) * double(pm.in + total) + double(ku[y]) * double(pm.out + total);
          if (numbers >= raw_numbers(pm)) continue;
          Measured::Option c{Representation::shared, {kv[x], ku[y]}, 0, numbers, errors[x * ku.size() + y], 0};
          c.worst = worst_relative(c.error_sq, norm_sq);
          m.options.push_back(std::move(c));
        }
    }
    if (bases) {  // what storing needs: the maps and norms, not the Grams or the errors
      for (SharedRows* side : {&shared.rows, &shared.cols}) {
        side->gram = {};
        side->error_sq = {};
      }
      *bases = std::move(shared);
    }
  }
  if (!rmm) return m;
  const auto x = timed_step(timing, "pass 1: RMM side Grams",
                            [&] { return grams ? side_grams(pm, f, *grams) : side_grams(pm, f, threads); });
  const auto sides = timed_step(timing, "pass 1: RMM candidates taken (waits for the device)",
                                [&] { return with_module_context(pm.path, [&] { return rmm->take(); }); });
  // Each side's relative factor errors at each p, for the manifest should a pair with it be chosen.
  std::vector<std::vector<double>> factor_errors[2];
  for (int s = 0; s < 2; ++s)
    for (const auto& d : sides[s]) {
      auto& e = factor_errors[s].emplace_back();
      for (i64 t = 0; t < n; ++t) e.push_back(x.x_sq[s][t] > 0 ? std::sqrt(d.d_sq[t] / x.x_sq[s][t]) : 0.0);
    }
  for (std::size_t i = 0; i < sides[0].size(); ++i)
    for (std::size_t j = 0; j < sides[1].size(); ++j) {
      const auto &a = sides[0][i], &b = sides[1][j];
      const double numbers = side_numbers(pm.in, r, n, a.p) + side_numbers(pm.out, r, n, b.p);
      if (numbers >= raw_numbers(pm)) continue;
      Measured::Option c{Representation::rmm, {a.p, b.p}, 0, numbers, delta_error_sq(x, a, b, r), 0,
                         {factor_errors[0][i], factor_errors[1][j]}};
      c.worst = worst_relative(c.error_sq, norm_sq);
      m.options.push_back(std::move(c));
    }
  return m;
}



// Writes module pm as RMM at the basis sizes of `chosen` (A, B side; 0: the mean alone) and
// returns its manifest entry, with the errors pass 1 measured on the same stored values.
BundleModule store_rmm(Backend& be, const PlannedModule& pm, const std::vector<TaskFactors>& f,
                       const Measured& measured, const Measured::Option& chosen, DType storage,
                       SafetensorsWriter& writer) {
  const i64 n = static_cast<i64>(f.size());
  const auto p = chosen.p;
  // One run at the larger p: a side's RMM at a smaller p is the first p directions of it, bit
  // for bit (RmmModuleEdge.WithoutErrorTermsTheStoredTensorsAreTheSameAndSmallerPIsAPrefix) —
  // so also of pass 1's run, whose differences gave `chosen` its errors.
  const i64 run = std::max<i64>({p[0], p[1], 1});
  const auto res = run_rmm(be, pm, f, run, storage);
  const RmmSide* side[2] = {&res.a, &res.b};
  auto bm = module_entry(pm);
  bm.representation = Representation::rmm;
  bm.basis = p;
  for (int s = 0; s < 2; ++s) {
    const char* name = s == 0 ? "lora_A" : "lora_B";
    writer.write_f32(bundle_tensor_name(pm.path, name, "mean"), side[s]->mean);
    if (p[s] > 0) {
      writer.write_f32(bundle_tensor_name(pm.path, name, "basis"), first_directions(side[s]->basis, run, p[s], 1));
      writer.write_f32(bundle_tensor_name(pm.path, name, "coef"), first_directions(side[s]->coef, run, p[s], n));
    }
  }
  bm.factor_error_a = chosen.factor_error[0];
  bm.factor_error_b = chosen.factor_error[1];
  bm.spectrum_a = res.a.spectrum;
  bm.spectrum_b = res.b.spectrum;
  for (i64 t = 0; t < n; ++t) {
    double norm = 0;
    for (const double x2 : measured.sigma_sq[t]) norm += x2;
    bm.delta_norm.push_back(std::sqrt(norm));
    bm.delta_error.push_back(norm > 0 ? std::sqrt(chosen.error_sq[t] / norm) : 0.0);
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
    const auto wide = widen_factors(tf);  // once, for the Grams, the new factors and their error
    const auto tt = with_module_context(pm.path, [&] { return task_truncation(tf, wide, pm.out, pm.in); });
    std::vector<float> a, b;
    truncated_factors(tt, wide, k, b, a);
    round_to_storage(a, storage);
    round_to_storage(b, storage);
    const double norm_sq = tt.norm_sq, err_sq = truncation_error_sq(tf, wide, pm.out, pm.in, norm_sq, b, a, k);
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
// by side); the errors measured on the rounded factors (shared_rows_parts).
BundleModule store_shared(Backend& be, Stream stream, const PlannedModule& pm, const std::vector<TaskFactors>& f,
                          i64 k, DType storage, SafetensorsWriter& writer, int threads, const SharedBasis* found) {
  const i64 n = static_cast<i64>(f.size());
  std::optional<SharedRows> again;
  if (!found)
    again = with_module_context(pm.path, [&] {
      const auto g = module_grams(be, stream, f, pm.out, pm.in);
      return shared_rows(be, stream, f, g.a, g.b, pm.out, pm.in, /*errors=*/false);
    });
  const SharedRows& shared = found ? found->rows : *again;
  const auto parts =
      with_module_context(pm.path, [&] { return shared_rows_parts(be, stream, shared, f, k, storage); });
  const auto& basis_t = parts.basis_t;
  const auto& task_b = parts.task_b;
  auto bm = module_entry(pm);
  bm.representation = Representation::shared_rows;
  bm.shared_rank = k;
  bm.delta_norm.resize(f.size());
  bm.delta_error.resize(f.size());
  std::vector<float> b_all(static_cast<std::size_t>(pm.out * n * k));
  parallel_tasks(n, threads, [&](long t) {
    // The shared basis already has ‖ΔW_i‖²: no truncation of the task is needed here.
    const double norm_sq = shared.norm_sq[t], err_sq = parts.error_sq[t];
    bm.delta_norm[t] = std::sqrt(norm_sq);
    bm.delta_error[t] = norm_sq > 0 ? std::sqrt(err_sq / norm_sq) : 0.0;
    for (i64 o = 0; o < pm.out; ++o)
      std::copy(task_b[t].begin() + o * k, task_b[t].begin() + (o + 1) * k, b_all.begin() + (o * n + t) * k);
  });
  writer.write_f32(bundle_tensor_name(pm.path, "lora_A", "shared"), basis_t);
  writer.write_f32(bundle_tensor_name(pm.path, "lora_B", "shared"), b_all);
  bm.storage_ratio = double(bm.stored_numbers(n)) / raw_numbers(pm);
  return bm;
}

// Writes module pm as shared bases of k = (Kv, Ku) directions (Vᵀ, U, then the tasks' cores);
// the errors measured on the stored parts, in closed form (shared_basis_stored_errors).
BundleModule store_shared_basis(Backend& be, Stream stream, const PlannedModule& pm,
                                const std::vector<TaskFactors>& f, std::array<i64, 2> k, DType storage,
                                SafetensorsWriter& writer, const SharedBasis* found) {
  const i64 n = static_cast<i64>(f.size());
  std::optional<SharedBasis> again;
  if (!found)
    again = with_module_context(pm.path, [&] {
      return shared_basis(be, stream, f, module_grams(be, stream, f, pm.out, pm.in), pm.out, pm.in, /*errors=*/false);
    });
  const SharedBasis& basis = found ? *found : *again;
  const auto parts = with_module_context(pm.path, [&] {
    return shared_basis_parts(be, stream, basis, f, k[0], k[1], storage);
  });
  auto bm = module_entry(pm);
  bm.representation = Representation::shared;
  bm.shared_basis = k;
  bm.delta_norm.resize(f.size());
  bm.delta_error.resize(f.size());
  // The basis already has ‖ΔW_i‖² (as store_shared's): no truncation of the task is needed.
  const auto& norm_sq = basis.rows.norm_sq;
  const auto err_sq = with_module_context(pm.path, [&] {
    return shared_basis_stored_errors(be, stream, parts, f, norm_sq);
  });
  for (i64 t = 0; t < n; ++t) {
    bm.delta_norm[t] = std::sqrt(norm_sq[t]);
    bm.delta_error[t] = norm_sq[t] > 0 ? std::sqrt(err_sq[t] / norm_sq[t]) : 0.0;
  }
  writer.write_f32(bundle_tensor_name(pm.path, "lora_A", "shared"), parts.vt);
  writer.write_f32(bundle_tensor_name(pm.path, "lora_B", "shared"), parts.u);
  writer.write_f32(bundle_tensor_name(pm.path, "lora_A", "cores"), parts.core_a);
  writer.write_f32(bundle_tensor_name(pm.path, "lora_B", "cores"), parts.core_b);
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
    if (choice[m].fixed >= 0 && measured[m].options[choice[m].fixed].kind == Representation::shared) {
      const auto [kv, ku] = measured[m].options[choice[m].fixed].p;
      i64 total = 0;
      for (const auto r : pm.task_ranks) total += r;
      specs.push_back({bundle_tensor_name(pm.path, "lora_A", "shared"), storage, {kv, pm.in}});
      specs.push_back({bundle_tensor_name(pm.path, "lora_B", "shared"), storage, {pm.out, ku}});
      specs.push_back({bundle_tensor_name(pm.path, "lora_A", "cores"), storage, {total, kv}});
      specs.push_back({bundle_tensor_name(pm.path, "lora_B", "cores"), storage, {ku, total}});
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

}  // namespace revmerge
