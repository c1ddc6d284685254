// revmerge merge --method auto | rank: measure every module's options (each task's singular
// values; RMM with a basis size per side; a row basis shared by the tasks; row and column bases
// shared by the tasks), allocate the storage budget across modules, then read the adapters
// again and write each module in the representation it was given (bundle version 2). The
// modules are split among workers — MPI ranks, or on the CPU one thread per core — which
// exchange their measurements so every one allocates alike.
#include "revmerge/store.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "backend/backend.hpp"
#include "backend/registry.hpp"
#include "core/atomic_output.hpp"
#include "core/interrupt.hpp"
#include "core/memory_info.hpp"
#include "distributed/agreement.hpp"
#include "distributed/shared_bundle.hpp"
#include "methods/adapter_set.hpp"
#include "methods/full_model_source.hpp"
#include "methods/recipe.hpp"
#include "methods/rmm_pipeline.hpp"
#include "methods/store/allocation.hpp"
#include "methods/store/local_workers.hpp"
#include "methods/store/parallel_tasks.hpp"
#include "methods/store/store_modules.hpp"
#include "revmerge/compress.hpp"
#include "revmerge/devices.hpp"
#include "revmerge/error.hpp"
#include "revmerge/hf_model.hpp"
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
  if (o.overwrite) {
    auto inputs = task_folders(o.tasks);
    if (o.full_models) inputs.push_back(o.full_models->base);
    refuse_replacing_inputs(o.out, inputs);
  }
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
  if (o.objective == StoreObjective::max && o.max_error)
    throw usage_error("--objective max: --max-error bounds every task already (the objective "
                      "chooses how a --storage budget is spent)");
  if (o.method == StoreMethod::rank && !o.rmm_basis.empty())
    throw usage_error("--basis: --method rank stores no RMM modules (use --method auto)");
  if (o.method == StoreMethod::rank && !o.representations.empty())
    throw usage_error("--representations: --method rank stores truncations only (use --method auto)");
  for (const auto p : o.rmm_basis)
    if (p < 1 || p > n - 1)
      throw usage_error("--basis " + std::to_string(p) + " is outside 1 .. n − 1 = " + std::to_string(n - 1));
}

// Whether `auto` weighs representation r.
bool weighs(const StoreMergeOptions& o, Representation r) {
  if (o.method == StoreMethod::rank) return r == Representation::rank;
  return o.representations.empty() ||
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
  if (!o.max_error) r.parameters.emplace_back("objective", o.objective == StoreObjective::max ? "max" : "mean");
  r.parameters.emplace_back("dtype", std::string(dtype_name(storage)) + (o.dtype ? "" : " (not given: the inputs')"));
  if (o.full_models) {  // the fine-tunes were compressed first
    r.parameters.emplace_back("base", o.full_models->base.string());
    r.parameters.emplace_back("rank", std::to_string(o.full_models->rank));
    r.parameters.emplace_back("oversampling", std::to_string(o.full_models->oversampling));
    r.parameters.emplace_back("power_iterations", std::to_string(o.full_models->power_iterations));
  }
  return r;
}

// The allocation's view of every module, each task's squared errors weighed by `weight`.
// Truncations are weighed where `truncations` says, and in any module no other option fits.
std::vector<ModuleOptions> module_options(const std::vector<PlannedModule>& plan,
                                          const std::vector<Measured>& measured,
                                          const std::vector<double>& weight, bool truncations) {
  std::vector<ModuleOptions> options;
  for (std::size_t m = 0; m < plan.size(); ++m) {
    ModuleOptions mo;
    mo.truncations = truncations || measured[m].options.empty();
    mo.sigma_sq = measured[m].sigma_sq;
    mo.task_weight = weight;
    mo.rank_unit = double(plan[m].in + plan[m].out);
    for (const auto& c : measured[m].options) {
      double e = 0;
      for (std::size_t t = 0; t < weight.size(); ++t) e += weight[t] * c.error_sq[t];
      mo.fixed.push_back({c.numbers, e, c.worst});
    }
    options.push_back(std::move(mo));
  }
  return options;
}

// Each task's squared delta error over all modules under `choice`, relative to its whole delta.
std::vector<double> task_relative_sq(const std::vector<Measured>& measured, const std::vector<ModuleChoice>& choice,
                                     const std::vector<double>& norm_sq) {
  std::vector<double> e(norm_sq.size(), 0.0);
  for (std::size_t m = 0; m < measured.size(); ++m)
    for (std::size_t t = 0; t < e.size(); ++t) {
      if (choice[m].fixed >= 0) {
        e[t] += measured[m].options[choice[m].fixed].error_sq[t];
        continue;
      }
      const auto& s = measured[m].sigma_sq[t];
      for (auto k = static_cast<std::size_t>(choice[m].kept[t]); k < s.size(); ++k) e[t] += s[k];
    }
  for (std::size_t t = 0; t < e.size(); ++t) e[t] = norm_sq[t] > 0 ? e[t] / norm_sq[t] : 0.0;
  return e;
}

// The largest task's error under a budget: the mean objective re-weighed towards the tasks that
// lose most (each weight times the square root of its error over the mean), keeping the
// allocation whose worst task is best. The first round is the mean objective's own, so the
// result is never worse than it in its worst task.
std::vector<ModuleChoice> allocate_for_worst(const std::vector<PlannedModule>& plan,
                                             const std::vector<Measured>& measured,
                                             const std::vector<double>& norm_sq, double budget, bool truncations) {
  const std::size_t n = norm_sq.size();
  std::vector<double> lift(n, 1.0), weight(n);
  std::vector<ModuleChoice> best;
  double best_worst = 0;
  for (int round = 0; round < 40; ++round) {
    for (std::size_t t = 0; t < n; ++t) weight[t] = norm_sq[t] > 0 ? lift[t] / norm_sq[t] : 0.0;
    auto choice = allocate_budget(module_options(plan, measured, weight, truncations), budget);
    const auto rel = task_relative_sq(measured, choice, norm_sq);
    const double worst = *std::max_element(rel.begin(), rel.end());
    double mean = 0, least = worst;
    for (const double x : rel) mean += x / double(n), least = std::min(least, x);
    if (best.empty() || worst < best_worst) best = std::move(choice), best_worst = worst;
    if (mean <= 0 || worst - least <= 1e-3 * worst) break;
    double total = 0;
    for (std::size_t t = 0; t < n; ++t) total += lift[t] *= std::sqrt(rel[t] / mean);
    for (auto& l : lift) l *= double(n) / total;
  }
  return best;
}

// The measurements as `--representations kind` alone weighs them: each module's options of
// that kind, with `index` holding each one's place among all of the module's options.
std::vector<Measured> options_of_kind(const std::vector<Measured>& all, Representation kind,
                                      std::vector<std::vector<int>>& index) {
  std::vector<Measured> out;
  index.assign(all.size(), {});
  for (std::size_t m = 0; m < all.size(); ++m) {
    Measured alone;
    alone.sigma_sq = all[m].sigma_sq;
    for (std::size_t f = 0; f < all[m].options.size(); ++f)
      if (all[m].options[f].kind == kind) {
        alone.options.push_back(all[m].options[f]);
        index[m].push_back(static_cast<int>(f));
      }
    out.push_back(std::move(alone));
  }
  return out;
}

// The allocation over every representation weighed — or, where one representation allocated
// alone loses less by `score` (lower is better), that one. The multiplier's allocation is
// optimal only on the options' convex hull, so with more options it can land above what one
// representation alone reaches; auto must be no worse than any of them at the same storage.
template <class Allocate, class Score>
std::vector<ModuleChoice> best_of_representations(const StoreMergeOptions& o, const std::vector<Measured>& measured,
                                                  const Allocate& allocate, const Score& score) {
  auto best = allocate(measured, weighs(o, Representation::rank));
  if (o.method != StoreMethod::automatic) return best;
  double best_score = score(best);
  for (const auto kind : {Representation::rmm, Representation::rank, Representation::shared_rows,
                          Representation::shared}) {
    if (!weighs(o, kind)) continue;
    std::vector<std::vector<int>> index;
    auto choice = allocate(options_of_kind(measured, kind, index), kind == Representation::rank);
    for (std::size_t m = 0; m < choice.size(); ++m)
      if (choice[m].fixed >= 0) choice[m].fixed = index[m][static_cast<std::size_t>(choice[m].fixed)];
    if (const double s = score(choice); s < best_score) best = std::move(choice), best_score = s;
  }
  return best;
}

}  // namespace

namespace {

// Full fine-tunes compressed into adapters under `scratch` (what `revmerge compress` writes, in
// f32), the tasks pointed at them with their model folders kept as their origin.
StoreMergeOptions compressed_tasks(const StoreMergeOptions& given, const std::filesystem::path& scratch) {
  const auto& in = *given.full_models;
  check_full_model_inputs(in);
  StoreMergeOptions o = given;
  for (auto& t : o.tasks) {
    throw_if_interrupted("merge");
    CompressOptions c;
    c.base = in.base;
    c.model = t.adapter;
    c.out = scratch / t.name;
    c.rank = in.rank;
    c.oversampling = in.oversampling;
    c.power_iterations = in.power_iterations;
    c.dtype = DType::F32;
    c.threads = o.threads;
    c.device = o.device;
    c.gpu = o.gpu;
    c.peers = o.peers;
    c.find_left_out = false;  // what the bundle does not carry is the caller's to report
    if (given.compress_progress)
      c.progress = [&](std::size_t done, std::size_t all, const std::string& path) {
        given.compress_progress(done, all, t.name + " " + path);
      };
    compress_checkpoint(c);
    t.origin = t.adapter;
    t.adapter = c.out;
  }
  if (!o.dtype) {  // the base's dtype, as a merge of the models themselves would write
    const HfModel base(in.base);
    const DType d = base.linears().empty() ? DType::F32 : base.checkpoint().at(base.linears().front().tensor).info->dtype;
    o.dtype = d == DType::BF16 || d == DType::F16 ? d : DType::F32;
  }
  return o;
}

BundleManifest store_adapters(const StoreMergeOptions& o);
BundleManifest on_gpus(const StoreMergeOptions& o);

}  // namespace

BundleManifest merge_store(const StoreMergeOptions& o) {
  check_options(o);
  if (o.gpus.size() > 1) return on_gpus(o);
  if (!o.full_models) return store_adapters(o);
  refuse_existing(o.out, o.overwrite);  // before minutes of compression
  // The compressed adapters' folder, never committed: removed. Worker 0's, where there are
  // several (each compression is split across them too).
  Peers* const peers = several(o.peers);
  std::optional<StagedDir> scratch;
  agree_on(peers, [&] {
    if (!peers || peers->rank() == 0) scratch.emplace(o.out.string() + ".compressing", /*overwrite=*/true);
  });
  const std::filesystem::path where =
      peers ? std::filesystem::path(peers->all_gather(scratch ? scratch->path().string() : std::string())[0])
            : scratch->path();
  return store_adapters(compressed_tasks(o, where));
}

namespace {

// The store of o.tasks by this worker of `peers` (null: the only one), computing on `threads`
// CPU threads (o.threads is what the manifest reports).
BundleManifest store_share(const StoreMergeOptions& o, Peers* peers, int threads) {
  const ThreadsOfThisThread pinned(threads);
  std::optional<AdapterSet> opened;
  std::unique_ptr<Backend> be;
  const auto candidates = rmm_candidates(o);
  const bool shared_rows_on = weighs(o, Representation::shared_rows), shared_on = weighs(o, Representation::shared);
  // RMM's candidates and the shared bases' Grams and eigensolves run on the backend; the shared
  // bases on a stream of their own, so that on a GPU they do not wait behind RMM's run.
  Stream shared_stream{};
  agree_on(peers, [&] {  // every worker opens every input: one that cannot fails them all
    opened.emplace(open_adapter_set(o.tasks));
    if (!candidates.empty() || shared_rows_on || shared_on) be = make_backend(o.device, {threads, o.gpu});
    if (be && (shared_rows_on || shared_on)) shared_stream = be->create_stream();
  });
  const auto& set = *opened;
  const i64 n = static_cast<i64>(o.tasks.size());
  // The inputs' factor bytes and widest dtype, as merge_rmm reports them.
  const auto source = adapter_source(set);
  const std::uint64_t input_bytes = source.factor_bytes;
  const DType input_dtype = source.input_dtype;
  const DType storage = o.dtype ? *o.dtype : input_dtype == DType::F64 ? DType::F32 : input_dtype;

  double all_numbers = 0;
  std::vector<std::uint64_t> module_bytes;
  for (const auto& pm : set.plan) all_numbers += raw_numbers(pm), module_bytes.push_back(source.staged_bytes(pm));
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
  // This worker's modules (all of them without peers).
  const auto [first, last] = peers ? share_of(module_bytes, peers->rank(), peers->size())
                                   : std::pair<std::size_t, std::size_t>{0, set.plan.size()};

  // Pass 1: the options of this worker's modules, then everyone's. The shared bases it finds
  // are kept for pass 2 while they fit in `keep_left` (the rest are found again, bitwise alike):
  // an eighth of the memory free, at most 1 GiB, split among this machine's workers.
  const std::size_t steps = 2 * set.plan.size();
  std::vector<Measured> measured;
  std::vector<std::optional<SharedBasis>> kept(last - first);
  std::uint64_t keep_left = std::min<std::uint64_t>(host_memory_available() / 8, std::uint64_t(1) << 30) /
                            static_cast<std::uint64_t>(peers ? peers->size() : 1);
  agree_on(peers, [&] {
    for (std::size_t m = first; m < last; ++m) {
      throw_if_interrupted("merge");
      const auto& pm = set.plan[m];
      if (o.progress) o.progress(m, steps, pm.path);
      const auto f = timed_step(o.timing, "pass 1: read", [&] { return read_module_factors(set, pm); });
      SharedBasis bases;
      measured.push_back(measure(be.get(), pm, f, candidates, storage, threads, shared_rows_on, shared_on, &bases,
                                 shared_stream, o.timing));
      if (const auto bytes = shared_basis_bytes(bases); bytes > 0 && bytes <= keep_left)
        keep_left -= bytes, kept[m - first] = std::move(bases);
    }
  });
  if (peers) {
    const auto parts = peers->all_gather(measured_bytes(measured));
    measured.clear();
    for (const auto& part : parts)
      for (auto& m : measured_from_bytes(part)) measured.push_back(std::move(m));
  }
  // Each task's squared errors count relative to its whole delta (all modules), so the
  // objective is the mean over tasks of the squared relative delta error.
  std::vector<double> task_norm_sq(static_cast<std::size_t>(n), 0.0);
  for (const auto& mm : measured)
    for (i64 t = 0; t < n; ++t)
      for (const double s : mm.sigma_sq[t]) task_norm_sq[t] += s;
  std::vector<double> weight;
  for (const double d : task_norm_sq) weight.push_back(d > 0 ? 1.0 / d : 0.0);
  const auto choice = timed_step(o.timing, "allocation", [&] {
    if (o.max_error)  // each module's cheapest choice within the bound: nothing to compare
      return allocate_max_error(module_options(set.plan, measured, weight, weighs(o, Representation::rank)),
                                *o.max_error);
    const auto relative = [&](const std::vector<ModuleChoice>& c) { return task_relative_sq(measured, c, task_norm_sq); };
    if (o.objective == StoreObjective::max)
      return best_of_representations(
          o, measured,
          [&](const std::vector<Measured>& m, bool truncations) {
            return allocate_for_worst(set.plan, m, task_norm_sq, budget, truncations);
          },
          [&](const std::vector<ModuleChoice>& c) {
            const auto e = relative(c);
            return *std::max_element(e.begin(), e.end());
          });
    return best_of_representations(
        o, measured,
        [&](const std::vector<Measured>& m, bool truncations) {
          return allocate_budget(module_options(set.plan, m, weight, truncations), budget);
        },
        [&](const std::vector<ModuleChoice>& c) {
          double sum = 0;
          for (const double e : relative(c)) sum += e;
          return sum;
        });
  });

  // Pass 2: each module of this worker's share stored as chosen.
  BundleManifest manifest;
  manifest.format_version = 2;
  manifest.method = method_name(o.method);
  manifest.basis = 0;
  manifest.dtype = storage;
  manifest.created_by = std::string("revmerge ") + REVMERGE_VERSION_STRING;
  manifest.fan_in_fan_out = set.adapters[0]->config().fan_in_fan_out;  // the set's, checked equal
  const auto backend_name = !be ? std::string() : threads == o.threads ? be->name()
                                                  : backend_description(o.device, o.threads, o.gpu);
  manifest.backend = be ? backend_name + "; truncations on the host (BLAS / LAPACK, f64)"
                      : "host (BLAS / LAPACK, f64)";
  for (std::size_t t = 0; t < o.tasks.size(); ++t)
    manifest.tasks.push_back({o.tasks[t].name,
                              (o.tasks[t].origin.empty() ? o.tasks[t].adapter : o.tasks[t].origin).string(),
                              set.adapters[t]->config().base_model_name_or_path,
                              set.adapters[t]->config().task_type});
  const auto specs = tensor_specs(set.plan, choice, measured, n, storage);
  std::optional<BundleShards> shards;
  if (o.shard_per_rank) {
    shards.emplace(BundleShards{{}, module_bytes});
    for (const auto& pm : set.plan) shards->module_paths.push_back(pm.path);
  }
  SharedBundle bundle(peers, o.out, o.overwrite, specs, {{"format", "revmerge-bundle"}, {"method", manifest.method}},
                      {}, shards);
  bundle.write_share([&] {
    for (std::size_t m = first; m < last; ++m) {
      throw_if_interrupted("merge");
      const auto& pm = set.plan[m];
      if (o.progress) o.progress(set.plan.size() + m, steps, pm.path);
      const auto f = timed_step(o.timing, "pass 2: read", [&] { return read_module_factors(set, pm); });
      const auto* option = choice[m].fixed >= 0 ? &measured[m].options[choice[m].fixed] : nullptr;
      const SharedBasis* found = kept[m - first] ? &*kept[m - first] : nullptr;
      auto& writer = bundle.writer();
      auto bm = !option ? timed_step(o.timing, "pass 2: rank",
                                     [&] { return store_rank(pm, f, choice[m].kept, storage, writer, threads); })
                : option->kind == Representation::shared_rows
                    ? timed_step(o.timing, "pass 2: shared_rows", [&] {
                        return store_shared(*be, shared_stream, pm, f, option->k, storage, writer, threads, found);
                      })
                : option->kind == Representation::shared
                    ? timed_step(o.timing, "pass 2: shared", [&] {
                        return store_shared_basis(*be, shared_stream, pm, f, option->p, storage, writer, found);
                      })
                    : timed_step(o.timing, "pass 2: rmm",
                                 [&] { return store_rmm(*be, pm, f, measured[m], *option, storage, writer); });
      manifest.modules.push_back(std::move(bm));
    }
  });
  if (o.progress) o.progress(steps, steps, "");
  manifest = bundle.gather_modules(manifest);
  double stored = 0;
  for (const auto& bm : manifest.modules) stored += double(bm.stored_numbers(n));
  manifest.storage_ratio = all_numbers > 0 ? stored / all_numbers : 0;
  manifest.input_bytes = input_bytes;
  for (const auto& spec : specs) manifest.stored_bytes += spec.nbytes();
  timed_step(o.timing, "commit", [&] { bundle.commit(manifest, recipe_text(o.recipe, store_record(o, storage, candidates))); });
  return manifest;
}

// On the CPU a module's store work is mostly small single-threaded pieces (Grams, r × r
// eigenproblems, an RMM run, the shared bases' Grams on one thread), so the cores idle; the
// modules run side by side instead, each core a worker of this process with its share of them
// (as ranks would split them). The bundle is the same bytes: a module's arithmetic does not
// depend on the thread count.
//
// On a GPU the same host-side pieces, and the waits for the device between them, run one module
// at a time behind it: workers sharing the GPU overlap them (gpu_store_workers), each with its
// share of the cores; the same bytes.
struct LocalWorkers {
  int count = 1, threads = 1;  ///< workers, and the CPU threads of each
};

LocalWorkers local_workers(const StoreMergeOptions& o) {
  if (several(o.peers)) return {1, o.threads};
  const int cores = o.threads > 0 ? o.threads : static_cast<int>(std::thread::hardware_concurrency());
  const bool on_gpu = o.device == Device::cuda || o.device == Device::automatic;
  const auto gpus = on_gpu ? probe_devices().gpus : std::vector<GpuInfo>{};
  if (o.device == Device::cuda || !gpus.empty()) {
    std::uint64_t memory = 0;
    for (const auto& g : gpus)
      if (g.index == o.gpu) memory = g.memory_bytes;
    const int count = gpu_store_workers(cores, memory);
    return {count, std::max(1, cores / count)};
  }
  return {std::max(1, cores), 1};
}

// One progress for the workers of this process: each module counted once, whichever worker did
// it. `progress` is what the workers call; finish() makes the last call.
class SharedProgress {
 public:
  explicit SharedProgress(const ProgressFn& whole) : whole_(whole) {}
  ProgressFn progress() {
    if (!whole_) return {};
    return [this](std::size_t, std::size_t steps, const std::string& path) {
      if (path.empty()) return;  // a worker's last call
      const std::lock_guard lock(mutex_);
      whole_(done_++, steps, path);
    };
  }
  void finish() {
    if (whole_) whole_(done_, done_, "");
  }

 private:
  const ProgressFn& whole_;
  std::mutex mutex_;
  std::size_t done_ = 0;
};

BundleManifest store_adapters(const StoreMergeOptions& o) {
  const auto workers = local_workers(o);
  if (workers.count < 2) return store_share(o, several(o.peers), o.threads);
  SharedProgress progress(o.progress);
  StoreMergeOptions w = o;
  w.shard_per_rank = false;  // these workers are the cores of one rank: its one file
  w.progress = progress.progress();
  auto manifest = on_local_workers<BundleManifest>(
      workers.count, [&](Peers& peers) { return store_share(w, &peers, workers.threads); });
  progress.finish();
  return manifest;
}

// o.gpus: one worker thread per entry (under mpirun, per entry of each rank), each the whole
// store (full fine-tunes compressed first) with its own GPU, peers and share of the CPU
// threads, as ranks would split it.
BundleManifest on_gpus(const StoreMergeOptions& o) {
  if (o.device == Device::cpu) throw usage_error("--gpus: GPUs for a merge on --device cpu");
  const auto n = static_cast<int>(o.gpus.size());
  SharedProgress progress(o.progress);
  StoreMergeOptions w = o;
  w.gpus.clear();
  w.device = Device::cuda;
  w.threads = o.threads ? o.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / n);
  w.progress = progress.progress();
  auto manifest = on_local_workers<BundleManifest>(n, [&](Peers& peers) {
    StoreMergeOptions mine = w;
    mine.gpu = o.gpus[static_cast<std::size_t>(peers.rank() % n)];  // this process's entry (nested: rank p·n + i)
    mine.peers = &peers;
    if (peers.rank() > 0) mine.compress_progress = {};  // worker 0 reports the compression
    return merge_store(mine);
  }, o.peers);  // under mpirun: every GPU of every rank a worker
  progress.finish();
  return manifest;
}

}  // namespace

}  // namespace revmerge
