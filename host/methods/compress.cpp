// revmerge compress: PT-SVD of a full fine-tune against its base, module by module.
#include "revmerge/compress.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <future>
#include <cmath>
#include <optional>
#include <set>
#include <span>

#include "backend/registry.hpp"
#include "core/atomic_output.hpp"
#include "core/interrupt.hpp"
#include "core/large_buffer.hpp"
#include "distributed/agreement.hpp"
#include "distributed/bytes.hpp"
#include "distributed/shared_output.hpp"
#include "methods/lowrank/left_out.hpp"
#include "methods/lowrank/pt_svd.hpp"
#include "methods/on_backend.hpp"
#include "methods/recipe.hpp"
#include "revmerge/error.hpp"
#include "revmerge/hf_model.hpp"
#include "revmerge/peft.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

bool listed(const std::vector<std::string>& names, const LinearWeight& w) {
  for (const auto& n : names)
    if (w.name == n || w.name.ends_with("." + n) || w.path == n) return true;
  return false;
}

void check_options(const CompressOptions& o) {
  if (o.rank < 1) throw usage_error("--rank: give the adapter rank (≥ 1)");
  if (o.oversampling < 0) throw usage_error("--oversampling: must be ≥ 0");
  if (o.power_iterations < 0) throw usage_error("--power-iterations: must be ≥ 0");
  if (!(o.energy >= 0 && o.energy <= 1))
    throw usage_error("--energy: " + std::to_string(o.energy) + " is outside (0, 1]");
  if (o.out.empty()) throw usage_error("--out: no adapter folder given");
  if (o.overwrite) refuse_replacing_inputs(o.out, {o.base, o.model});
  if (!is_float_dtype(o.dtype) || o.dtype == DType::F64)
    throw usage_error("--dtype: an adapter is written as f32, f16 or bf16");
}

// One module's LoRA factors from the PT-SVD of its Δ (‖Δ‖² = sq; rank from the options, or
// from the energy kept), its line of the report, and its squared error and squared norm added
// to the totals.
LoraModuleData compress_module(const TruncatedSvd& svd, double sq, const LinearWeight& w,
                               const CompressOptions& o, CompressReport& report, double& err,
                               double& norm) {
  i64 k = svd.k;
  if (o.energy > 0 && sq > 0) {
    double kept = 0;
    for (k = 0; k < svd.k && kept < o.energy * sq; ++k) kept += svd.s[k] * svd.s[k];
    k = std::max<i64>(k, 1);
  }
  double kept = 0;
  for (i64 c = 0; c < k; ++c) kept += svd.s[c] * svd.s[c];
  LoraModuleData m{w.path, k, w.in, w.out, std::vector<float>(static_cast<std::size_t>(k * w.in)),
                   std::vector<float>(static_cast<std::size_t>(w.out * k))};
  lora_factors(svd, k, w, m.a.data(), m.b.data(), k);
  const double module_err = std::max(sq - kept, 0.0);
  report.modules.push_back({w.path, w.out, w.in, k, sq > 0 ? std::sqrt(module_err / sq) : 0.0,
                            std::sqrt(sq)});
  err += module_err;
  norm += sq;
  return m;
}

// The CPU's PT-SVDs, one module after the other, each step on all the threads: Δ formed in
// f64 and in f32 (the power iterations' copy) in one pass, then the SVD on the BLAS threads,
// its scratch kept from module to module. (Forming the next Δ on a helper thread while the SVD
// runs, as before, put one thread more on the cores than there are: the BLAS threads waited for
// the one the helper displaced, and the whole run took as long.)
template <class Finish>
void compress_on_cpu(const HfModel& base, const HfModel& ft,
                     const std::vector<const LinearWeight*>& chosen, const CompressOptions& o,
                     Finish& finish) {
  std::size_t largest = 0;
  for (const auto* w : chosen) largest = std::max(largest, static_cast<std::size_t>(w->in * w->out));
  LargeBuffer<double> delta;
  LargeBuffer<float> delta32;
  delta.reserve(largest);
  const bool f32_copy = o.power_iterations > 0;
  if (f32_copy) delta32.reserve(largest);
  RandomizedSvdWork work;
  const int threads = o.threads > 0 ? o.threads : omp_get_max_threads();
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    throw_if_interrupted("compress");
    const auto& w = *chosen[i];
    const auto count = static_cast<std::size_t>(w.in * w.out);
    const auto d = delta.first(count);
    const auto d32 = f32_copy ? delta32.first(count) : std::span<float>{};
    const double sq = read_delta_into(base, ft, w, d, d32, threads);
    finish(i, pt_svd(d, w, o.rank, o.oversampling, o.power_iterations, o.seed, &work, d32), sq);
  }
}

// The adapter's recipe: PT-SVD with every option, the base and the fine-tune.
RecipeRecord compress_record(const CompressOptions& o) {
  const auto names = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s.empty() ? std::string("(none)") : s;
  };
  return {"pt-svd",
          {{"rank", std::to_string(o.rank)},
           {"energy", o.energy > 0 ? std::to_string(o.energy) : "0 (not given: the rank everywhere)"},
           {"oversampling", std::to_string(o.oversampling)},
           {"power_iterations", std::to_string(o.power_iterations)},
           {"include", o.include.empty() ? "(all linear modules)" : names(o.include)},
           {"exclude", names(o.exclude)},
           {"dtype", std::string(dtype_name(o.dtype))},
           {"seed", std::to_string(o.seed)}},
          {{"base", o.base}, {"model", o.model}}};
}

}  // namespace

CompressReport compress_checkpoint(const CompressOptions& o) {
  // A GPU when asked for or, by default, when one is usable (before any output exists: asked
  // for where none is usable, make_backend says why).
  const bool on_gpu = o.device == Device::cuda ||
                      (o.device == Device::automatic && cuda_unavailable_reason().empty());
  check_options(o);  // a bad option is reported before a GPU is started
  const auto backend = on_gpu ? make_backend(Device::cuda, {o.threads, o.gpu}) : nullptr;
  return compress_checkpoint_on(o, backend.get());
}

namespace {

// A worker's report lines with each module's squared error and norm, as bytes and back (what
// the workers of one compression exchange; exact, so the totals are summed as one worker would).
struct ModuleLine {
  CompressedModule line;
  double err_sq = 0, norm_sq = 0;
};

std::string lines_bytes(const std::vector<ModuleLine>& lines) {
  ByteWriter out;
  for (const auto& l : lines) {
    out.put_string(l.line.path);
    out.put(l.line.out), out.put(l.line.in), out.put(l.line.rank);
    out.put(l.line.relative_error), out.put(l.line.delta_norm), out.put(l.err_sq), out.put(l.norm_sq);
  }
  return std::move(out.bytes());
}

std::vector<ModuleLine> lines_from_bytes(const std::string& in) {
  std::vector<ModuleLine> lines;
  ByteReader r(in, "a worker's report lines");
  while (!r.done()) {
    ModuleLine l;
    l.line.path = r.get_string();
    l.line.out = r.get<i64>(), l.line.in = r.get<i64>(), l.line.rank = r.get<i64>();
    l.line.relative_error = r.get<double>(), l.line.delta_norm = r.get<double>();
    l.err_sq = r.get<double>(), l.norm_sq = r.get<double>();
    lines.push_back(std::move(l));
  }
  return lines;
}

}  // namespace

CompressReport compress_checkpoint_on(const CompressOptions& o, Backend* device) {
  check_options(o);
  Peers* const peers = several(o.peers);
  std::unique_ptr<HfModel> base_model, ft_model;
  agree_on(peers, [&] {  // every worker opens both; one that cannot fails them all
    base_model = std::make_unique<HfModel>(o.base);
    ft_model = std::make_unique<HfModel>(o.model);
  });
  const HfModel &base = *base_model, &ft = *ft_model;
  std::vector<const LinearWeight*> chosen;
  for (const auto& w : base.linears()) {
    if (!o.include.empty() && !listed(o.include, w)) continue;
    if (listed(o.exclude, w)) continue;
    chosen.push_back(&w);
  }
  if (chosen.empty())
    throw usage_error(o.base.string() + ": no linear module left to compress (check --include / "
                      "--exclude against the names `revmerge info` lists)");
  for (const auto* w : chosen) check_fine_tune_tensor(ft, *w, "the fine-tune");
  if (o.threads > 0) openblas_set_num_threads(o.threads);  // the BLAS calls are the work
  const auto engine = device ? make_device_pt_svd(*device) : nullptr;
  // What the adapter cannot carry: on a GPU found by a host thread while the device works; on
  // the CPU after the SVDs, which use every core (a thread more would slow them as much).
  std::set<std::string> carried;
  for (const auto* w : chosen) carried.insert(w->tensor);
  const bool find_now = o.find_left_out && !o.save_changed;
  auto left_out = std::async(engine ? std::launch::async : std::launch::deferred,
                             [&] { return find_now ? changed_tensors_left_out(base, ft, carried, "compress")
                                                   : std::vector<UncarriedTensor>{}; });
  // --save-changed: the differences are found first, since the modules kept whole are laid out
  // in the adapter beside the factors. PEFT makes every module named like a compressed one a
  // LoRA layer (target_modules are names), and a module cannot be both.
  std::vector<UncarriedTensor> found_left;
  KeptWhole kept;
  AdapterWriteOptions wo;
  if (o.save_changed) {
    found_left = changed_tensors_left_out(base, ft, carried, "compress");
    std::set<std::string> leaves, lora_layers;
    for (const auto* w : chosen) leaves.insert(w->path.substr(w->path.rfind('.') + 1));
    for (const auto& w : base.linears())
      if (leaves.count(w.path.substr(w.path.rfind('.') + 1))) lora_layers.insert(w.path);
    kept = keep_changed_modules(ft, found_left, lora_layers);
    wo.modules_to_save = kept.modules;
    for (const auto& t : kept.tensors) {
      const auto& ct = ft.checkpoint().at(t.tensor);
      wo.whole_tensors.push_back({t.tensor, ct.info->dtype, ct.info->shape});
    }
  }
  // The kept modules' tensors, the fine-tune's bytes as they are, written by the first worker
  // a piece at a time (a 70b's embeddings are gigabytes), each piece's pages dropped after.
  const bool writes_whole = !peers || peers->rank() == 0;
  const auto write_whole = [&](PeftAdapterWriter& w) {
    if (!writes_whole) return;
    for (const auto& t : kept.tensors) {
      const auto& ct = ft.checkpoint().at(t.tensor);
      const auto bytes = ct.file->bytes(*ct.info);
      const std::uint64_t size = dtype_size(ct.info->dtype), piece = std::uint64_t(64) << 20;
      for (std::uint64_t at = 0; at < bytes.size(); at += piece) {
        throw_if_interrupted("compress");
        const auto n = std::min<std::uint64_t>(piece, bytes.size() - at);
        w.write_whole(t.tensor, at, bytes.subspan(at, n));
        ct.file->evict_part(*ct.info, at / size, n / size);
      }
    }
  };
  wo.base_model_name_or_path = o.base.string();
  wo.dtype = o.dtype;
  wo.overwrite = o.overwrite;
  wo.fan_in_fan_out = base.stores_weights_transposed();  // PEFT applies BA transposed there
  wo.metadata = {{"revmerge.method", "pt-svd"}};
  wo.extra_files = {recipe_file(o.recipe, compress_record(o))};
  // This worker's modules (all of them alone), balanced by the weights' sizes.
  std::vector<std::uint64_t> sizes;
  for (const auto* w : chosen) sizes.push_back(static_cast<std::uint64_t>(w->in * w->out));
  const auto [first, last] = peers ? share_of(sizes, peers->rank(), peers->size())
                                   : std::pair<std::size_t, std::size_t>{0, chosen.size()};
  const std::vector<const LinearWeight*> mine(chosen.begin() + static_cast<std::ptrdiff_t>(first),
                                              chosen.begin() + static_cast<std::ptrdiff_t>(last));
  // With a fixed rank every module's shape is known up front, so each module's factors are
  // written as soon as they exist (a 70b at rank 64 holds 3.3 GB of them otherwise); energy
  // ranks are known only after each SVD, so those factors are held (each worker its share's)
  // and the adapter is laid out and written once every worker's ranks are known.
  SharedOutput steps(peers);
  std::optional<PeftAdapterWriter> streamed;
  const auto open_adapter = [&](const std::vector<LoraModuleShape>& shapes) {
    steps.open(
        {},
        [&] {
          streamed.emplace(o.out, shapes, wo);
          return std::vector<std::string>{streamed->writing_path().string()};
        },
        [&](const std::vector<std::string>& files) {
          streamed.emplace(PeftAdapterWriter::Join{}, o.out, shapes, wo, files.at(0));
        });
  };
  if (o.energy == 0) {
    std::vector<LoraModuleShape> shapes;
    for (const auto* w : chosen) shapes.push_back({w->path, std::min({o.rank, w->in, w->out}), w->in, w->out});
    open_adapter(shapes);
  }
  std::vector<LoraModuleData> held;
  CompressReport report;
  report.device = engine ? device->name() : "cpu";
  std::vector<ModuleLine> lines;  // this worker's, in module order
  auto finish_module = [&](std::size_t i, const TruncatedSvd& svd, double sq) {
    const auto& w = *mine[i];
    ModuleLine line;
    CompressReport one;
    auto m = compress_module(svd, sq, w, o, one, line.err_sq, line.norm_sq);
    line.line = one.modules.front();
    lines.push_back(std::move(line));
    if (streamed) streamed->write(m.path, m.a, m.b);
    else held.push_back(std::move(m));
    if (o.progress) o.progress(first + i + 1, chosen.size(), w.path);
  };
  const auto compress_share = [&] {
    if (streamed) write_whole(*streamed);
    if (!engine) return compress_on_cpu(base, ft, mine, o, finish_module);
    const HfModel* fine_tune = &ft;
    // While the device works on a module, a helper thread maps the next one's bytes in, so
    // the engine's copy into pinned memory runs at memory speed instead of faulting page by
    // page.
    const auto prefetch = [&](std::size_t i) {
      for (const HfModel* m : {&base, fine_tune}) {
        const auto& t = m->checkpoint().at(mine[i]->tensor);
        t.file->prefetch(*t.info);
      }
    };
    std::future<void> next;
    for (std::size_t i = 0; i < mine.size(); ++i) {
      throw_if_interrupted("compress");
      if (next.valid()) next.get();
      if (i + 1 < mine.size()) next = std::async(std::launch::async, prefetch, i + 1);
      const auto& w = *mine[i];
      const auto r = batched_pt_svd(*engine, base, {&fine_tune, 1}, w,
                                   pt_svd_options(w, o.rank, o.oversampling, o.power_iterations, o.seed));
      finish_module(i, r[0].svd, r[0].norm_sq);
    }
  };
  const auto sync = [&] { streamed->commit(); };
  const auto written = [&] { return streamed->written_names(); };
  std::vector<std::string> others;
  if (streamed) others = steps.write_share(compress_share, sync, written);
  else agree_on(peers, compress_share);
  // Every worker's lines, then the totals summed in module order (as one worker sums them).
  double err = 0, norm = 0, stored = 0, dense = 0;
  for (const auto& part : steps.gather(lines_bytes(lines)))
    for (auto& l : lines_from_bytes(part)) {
      err += l.err_sq;
      norm += l.norm_sq;
      stored += double(l.line.rank) * double(l.line.in + l.line.out);
      dense += double(l.line.in) * double(l.line.out);
      report.modules.push_back(std::move(l.line));
    }
  report.relative_error = norm > 0 ? std::sqrt(err / norm) : 0;
  report.storage = stored / dense;
  report.left_out = o.save_changed ? std::move(found_left) : left_out.get();
  report.kept_whole = kept.tensors;
  report.modules_kept_whole = kept.modules;
  if (!streamed && peers) {  // energy ranks, now known everywhere: each worker writes its modules
    std::vector<LoraModuleShape> shapes;
    for (const auto& m : report.modules) shapes.push_back({m.path, m.rank, m.in, m.out});
    open_adapter(shapes);
    others = steps.write_share(
        [&] {
          write_whole(*streamed);
          for (const auto& m : held) streamed->write(m.path, m.a, m.b);
        },
        sync, written);
  }
  steps.commit([&] {
    throw_if_interrupted("compress");
    if (!streamed) return write_peft_adapter(o.out, held, wo, write_whole);
    for (const auto& name : others) streamed->written_elsewhere(name);
    streamed->commit();
  });
  return report;
}

}  // namespace revmerge
