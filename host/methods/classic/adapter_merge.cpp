// The classic methods on PEFT adapters, PEFT's definitions: separate (A's and B's merged on
// their own, weights split as √|wᵢsᵢ| with the sign on A), combined (the products sᵢBᵢAᵢ),
// cat, and svd. Output: one adapter (scale 1), or base + merged delta as a full model.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <optional>

#include "core/interrupt.hpp"
#include "distributed/agreement.hpp"
#include "distributed/bytes.hpp"
#include "methods/adapter_set.hpp"
#include "methods/classic/classic_internal.hpp"
#include "methods/classic/combine.hpp"
#include "methods/lowrank/refactor.hpp"
#include "methods/model_output.hpp"
#include "revmerge/error.hpp"
#include "revmerge/hf_model.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

struct Context {
  const ClassicMergeOptions& o;
  const AdapterSet& set;
  TaskParameters p;
  std::optional<CombineRecipe> recipe;
  i64 target_rank = 0;
  int threads = 1;
};

// A merged module: low-rank factors, or a dense out × in delta.
struct ModuleDelta {
  LowRankFactors factors;
  std::vector<float> dense;
  bool is_dense = false;
};

// d (out × in) += coef · B A for B out × rank and A rank × in.
void add_product(double coef, const std::vector<float>& b, const std::vector<float>& a, i64 rank,
                 i64 out, i64 in, float* d) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, rank, static_cast<float>(coef),
              b.data(), rank, a.data(), in, 1.0f, d, in);
}

std::vector<float> dense_sum(const std::vector<TaskFactors>& f, const std::vector<double>& coef,
                             i64 out, i64 in) {
  std::vector<float> d(static_cast<std::size_t>(out * in), 0.0f);
  for (std::size_t t = 0; t < f.size(); ++t) add_product(coef[t], f[t].b, f[t].a, f[t].rank, out, in, d.data());
  return d;
}

ModuleDelta merge_separate(const Context& c, const PlannedModule& pm,
                           const std::vector<TaskFactors>& f) {
  const i64 n = static_cast<i64>(f.size()), r = f[0].rank;
  for (i64 t = 1; t < n; ++t)
    if (f[t].rank != r)
      throw shape_error("module '" + pm.path + "': rank " + std::to_string(f[t].rank) +
                        " in task '" + c.o.tasks[t].name + "' but " + std::to_string(r) +
                        " in task '" + c.o.tasks[0].name +
                        "'; --mode separate pairs the rows of equal-rank factors (use --mode "
                        "combined, --method svd or --method cat)");
  std::vector<float> a(static_cast<std::size_t>(n * r * pm.in)), b(static_cast<std::size_t>(n * pm.out * r));
  std::vector<double> wa(n), wb(n);
  for (i64 t = 0; t < n; ++t) {
    std::copy(f[t].a.begin(), f[t].a.end(), a.begin() + t * r * pm.in);
    std::copy(f[t].b.begin(), f[t].b.end(), b.begin() + t * pm.out * r);
    const double ws = c.p.weights[t] * f[t].scale;
    wb[t] = std::sqrt(std::fabs(ws));
    wa[t] = ws >= 0 ? wb[t] : -wb[t];  // the sign goes on one side only
  }
  ModuleDelta d;
  d.factors.rank = r;
  d.factors.a.resize(static_cast<std::size_t>(r * pm.in));
  d.factors.b.resize(static_cast<std::size_t>(pm.out * r));
  auto recipe_a = *c.recipe;
  recipe_a.lambda = 1.0;  // λ scales the product once: it goes on B
  combine_stack(recipe_a, {a, n, r * pm.in, wa, c.p.densities, pm.path + ".lora_A", c.o.seed},
                d.factors.a, c.threads);
  combine_stack(*c.recipe, {b, n, pm.out * r, wb, c.p.densities, pm.path + ".lora_B", c.o.seed},
                d.factors.b, c.threads);
  return d;
}

// Whether the recipe is a plain weighted sum (then Σ cᵢ BᵢAᵢ stays low-rank).
bool is_linear(const CombineRecipe& r) {
  return r.sparsify == Sparsify::none && !r.elect_sign && !r.select_by_variance;
}

ModuleDelta merge_module(const Context& c, const PlannedModule& pm, bool exact) {
  const auto f = read_module_factors(c.set, pm);
  const i64 n = static_cast<i64>(f.size());
  const auto method = c.o.method;
  const double lambda = c.o.lambda.value_or(1.0);
  ModuleDelta d;
  if (method == ClassicMethod::cat) {
    i64 total = 0;
    for (const auto& t : f) total += t.rank;
    d.factors.rank = total;
    d.factors.a.assign(static_cast<std::size_t>(total * pm.in), 0.0f);
    d.factors.b.assign(static_cast<std::size_t>(pm.out * total), 0.0f);
    i64 at = 0;
    for (i64 t = 0; t < n; ++t) {
      const double coef = lambda * c.p.weights[t] * f[t].scale;  // on A, as PEFT does
      for (i64 k = 0; k < f[t].rank; ++k, ++at) {
        for (i64 x = 0; x < pm.in; ++x)
          d.factors.a[at * pm.in + x] = static_cast<float>(coef * f[t].a[k * pm.in + x]);
        for (i64 o = 0; o < pm.out; ++o)
          d.factors.b[o * total + at] = f[t].b[o * f[t].rank + k];
      }
    }
    return d;
  }
  if (method != ClassicMethod::svd && c.o.mode == LoraMergeMode::separate)
    return merge_separate(c, pm, f);
  std::vector<double> coef(n);
  if (method == ClassicMethod::svd || is_linear(*c.recipe)) {
    double divisor = 1;
    if (c.recipe && c.recipe->normalize == Normalize::weight_sum) {
      divisor = 0;
      for (const auto w : c.p.weights) divisor += w;
      if (std::fabs(divisor) < 1e-8) divisor = 1;  // the guard combine_stack applies
    }
    for (i64 t = 0; t < n; ++t) coef[t] = lambda * c.p.weights[t] * f[t].scale / divisor;
    if (exact) {
      d.is_dense = true;
      d.dense = dense_sum(f, coef, pm.out, pm.in);
      return d;
    }
    std::vector<LowRankTerm> terms;
    for (i64 t = 0; t < n; ++t) terms.push_back({f[t].b, f[t].a, f[t].rank, coef[t]});
    d.factors = refactor_sum(terms, pm.out, pm.in, c.target_rank);
    return d;
  }
  // Combined TIES / DARE / magnitude pruning on the dense products sᵢBᵢAᵢ.
  const i64 count = pm.out * pm.in;
  std::vector<float> stack(static_cast<std::size_t>(n * count));
  for (i64 t = 0; t < n; ++t)
    add_product(f[t].scale, f[t].b, f[t].a, f[t].rank, pm.out, pm.in, stack.data() + t * count);
  std::vector<float> merged(static_cast<std::size_t>(count));
  combine_stack(*c.recipe, {stack, n, count, c.p.weights, c.p.densities, pm.path, c.o.seed},
                merged, c.threads);
  if (exact) {
    d.is_dense = true;
    d.dense = std::move(merged);
    return d;
  }
  d.factors = refactor_dense(merged, pm.out, pm.in, c.target_rank);
  return d;
}

// Every module merged, in plan order. With several workers each merges a contiguous share
// (balanced by the inputs' factor sizes) and all exchange the results (adapters are small: the
// whole merged adapter is what one process holds too), so every worker returns every module.
std::vector<LoraModuleData> merge_adapter_modules(const Context& c) {
  Peers* const peers = several(c.o.peers);
  const auto& plan = c.set.plan;
  std::vector<std::uint64_t> sizes;
  for (const auto& pm : plan) sizes.push_back(std::uint64_t(pm.rank) * std::uint64_t(pm.in + pm.out));
  const auto [first, last] = peers ? share_of(sizes, peers->rank(), peers->size())
                                   : std::pair<std::size_t, std::size_t>{0, plan.size()};
  std::vector<LoraModuleData> modules;
  agree_on(peers, [&] {
    for (std::size_t i = first; i < last; ++i) {
      throw_if_interrupted("merge");
      const auto& pm = plan[i];
      auto d = with_module_context(pm.path, [&] { return merge_module(c, pm, false); });
      modules.push_back({pm.path, d.factors.rank, pm.in, pm.out, std::move(d.factors.a), std::move(d.factors.b)});
      if (c.o.progress) c.o.progress(i + 1, plan.size(), pm.path);
    }
  });
  if (!peers) return modules;
  ByteWriter mine;
  for (const auto& m : modules) {
    mine.put_string(m.path);
    mine.put(m.rank), mine.put(m.in), mine.put(m.out);
    mine.put_values(m.a), mine.put_values(m.b);
  }
  modules.clear();
  const auto parts = peers->all_gather(mine.bytes());
  for (std::size_t r = 0; r < parts.size(); ++r) {
    ByteReader in(parts[r], "the merged modules of worker " + std::to_string(r));
    while (!in.done()) {
      LoraModuleData m;
      m.path = in.get_string();
      m.rank = in.get<i64>(), m.in = in.get<i64>(), m.out = in.get<i64>();
      m.a = in.get_values<float>(), m.b = in.get_values<float>();
      modules.push_back(std::move(m));
    }
  }
  return modules;
}

}  // namespace

ClassicMergeReport merge_classic_adapters(const ClassicMergeOptions& o) {
  if (full_models_only(o.method))
    throw usage_error("--method " + to_string(o.method) + " merges full models (mergekit's " +
                      to_string(o.method) + "); the inputs are LoRA adapters (merge them with "
                      "linear, or --mode combined)");
  if (o.memory_budget != 0)
    throw usage_error("--memory-budget: LoRA adapters are merged module by module, each whole (they "
                      "are small); the budget bounds full-model merges and --method rmm");
  std::optional<AdapterSet> set;
  agree_on(several(o.peers), [&] { set.emplace(open_adapter_set(o.tasks, MissingModules::zero)); });
  Context c{o, *set, {}, {}, 0, o.threads > 0 ? o.threads : omp_get_max_threads()};
  c.p = task_parameters(o, o.tasks.size());
  if (is_elementwise(o.method)) c.recipe = make_recipe(o, Convention::peft);
  for (const auto& pm : c.set.plan) c.target_rank = std::max(c.target_rank, pm.rank);
  if (o.rank < 0) throw usage_error("--rank: must be positive");
  if (o.rank > 0) c.target_rank = o.rank;
  ClassicMergeReport report;
  report.method = to_string(o.method);
  report.mode = (o.method == ClassicMethod::cat || o.method == ClassicMethod::svd ||
                 o.mode == LoraMergeMode::combined)
                    ? "combined"
                    : "separate";
  report.convention = "peft";
  report.items = static_cast<i64>(c.set.plan.size());
  report.warnings = adapter_set_warnings(o.tasks, c.set);
  // The target rank matters where the merged delta is re-factorised: svd, and combined
  // element-wise merges written as an adapter.
  const bool refactors = !o.full_model && o.method != ClassicMethod::cat &&
                         (o.method == ClassicMethod::svd || o.mode == LoraMergeMode::combined);
  report.parameters = classic_parameters(
      o, c.p, c.recipe ? &*c.recipe : nullptr, refactors ? c.target_rank : 0,
      o.dtype ? std::string(dtype_name(*o.dtype)) : o.full_model ? "the base model's" : "F32");
  if (!o.full_model) {
    if (!o.base.empty())
      throw usage_error("--base: an adapter merge writes an adapter; add --full-model to write "
                        "base + merged delta as a full model");
    report.output = "adapter";
    auto modules = merge_adapter_modules(c);
    for (const auto& m : modules) report.rank = std::max(report.rank, m.rank);
    const auto& first = c.set.adapters[0]->config();
    AdapterWriteOptions w;
    w.base_model_name_or_path = first.base_model_name_or_path;
    w.task_type = first.task_type;
    w.dtype = o.dtype.value_or(DType::F32);
    w.overwrite = o.overwrite;
    w.fan_in_fan_out = first.fan_in_fan_out;
    w.metadata = {{"revmerge.method", report.method}, {"revmerge.mode", report.mode}};
    w.extra_files = {classic_recipe_file(o, report)};
    agree_on(several(o.peers), [&] {  // worker 0 writes what all merged
      if (!several(o.peers) || o.peers->rank() == 0) write_peft_adapter(o.out, modules, w);
    });
    return report;
  }
  if (o.base.empty()) throw usage_error("--full-model: give the base model with --base");
  report.output = "model";
  std::optional<HfModel> opened;
  agree_on(several(o.peers), [&] { opened.emplace(o.base); });
  const HfModel& base = *opened;
  const bool fif = c.set.adapters[0]->config().fan_in_fan_out;
  std::map<std::string, const PlannedModule*> by_tensor;
  for (const auto& pm : c.set.plan) {
    const auto name = pm.path + ".weight";
    const auto* t = base.checkpoint().find(name);
    const std::vector<i64> want = fif ? std::vector<i64>{pm.in, pm.out} : std::vector<i64>{pm.out, pm.in};
    if (!t || t->info->shape != want)
      throw shape_error(o.base.string() + ": " + (t ? "tensor '" + name + "' has another shape than" : "no tensor '" + name + "' for") +
                        " the adapters' module '" + pm.path + "' (" + std::to_string(pm.out) +
                        " × " + std::to_string(pm.in) + "); is this the adapters' base model?");
    by_tensor[name] = &pm;
  }
  ModelOutputOptions mo;
  mo.dtype = o.dtype;
  mo.overwrite = o.overwrite;
  mo.max_shard_bytes = o.max_shard_bytes;
  mo.progress = o.progress;
  mo.peers = o.peers;  // each worker its share of the tensors, into the shards worker 0 laid out
  mo.shard_per_rank = o.shard_per_rank;
  mo.extra_files = {classic_recipe_file(o, report)};
  const auto produce = [&](const std::string& name, std::vector<float>& values) {
    const auto it = by_tensor.find(name);
    if (it == by_tensor.end()) return false;
    const auto& pm = *it->second;
    auto d = with_module_context(pm.path, [&] { return merge_module(c, pm, true); });
    if (!d.is_dense) {
      d.dense.assign(static_cast<std::size_t>(pm.out * pm.in), 0.0f);
      add_product(1.0, d.factors.b, d.factors.a, d.factors.rank, pm.out, pm.in, d.dense.data());
    }
    const auto& t = base.checkpoint().at(name);
    t.file->read(*t.info, values);
    for (i64 o2 = 0; o2 < pm.out; ++o2)
      for (i64 x = 0; x < pm.in; ++x)
        values[fif ? x * pm.out + o2 : o2 * pm.in + x] += d.dense[o2 * pm.in + x];
    return true;
  };
  write_full_model(base, o.out, produce, mo);
  return report;
}

}  // namespace revmerge
