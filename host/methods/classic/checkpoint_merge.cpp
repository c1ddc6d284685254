// The classic methods on full checkpoints, mergekit's definitions: every floating-point tensor
// of the base merged from the task vectors δᵢ = Wᵢ − W_base (linear: from the weights
// themselves), written as a full model beside the base's config.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <memory>

#include "backend/registry.hpp"
#include "core/widen.hpp"
#include "methods/classic/classic_internal.hpp"
#include "methods/classic/combine.hpp"
#include "methods/classic/combine_on_backend.hpp"
#include "methods/classic/piece_merge.hpp"
#include "methods/classic/thinning.hpp"
#include "distributed/agreement.hpp"
#include "methods/model_output.hpp"
#include "revmerge/error.hpp"
#include "revmerge/hf_model.hpp"

namespace revmerge {

using i64 = std::int64_t;

void check_same_tensors(const HfModel& base, const std::vector<std::unique_ptr<HfModel>>& models,
                        const std::vector<TaskSource>& tasks) {
  for (std::size_t t = 0; t < models.size(); ++t) {
    const auto& ck = models[t]->checkpoint();
    for (const auto& bt : base.checkpoint().tensors()) {
      const auto* mt = ck.find(bt.info->name);
      if (!mt)
        throw shape_error(tasks[t].adapter.string() + ": tensor '" + bt.info->name +
                          "' of the base is missing from task '" + tasks[t].name + "'");
      if (mt->info->shape != bt.info->shape)
        throw shape_error(tasks[t].adapter.string() + ": tensor '" + bt.info->name +
                          "' has another shape in task '" + tasks[t].name +
                          "' than in the base; the models are not fine-tunes of one base");
    }
    if (ck.tensors().size() != base.checkpoint().tensors().size())
      for (const auto& mt : ck.tensors())
        if (!base.checkpoint().find(mt.info->name))
          throw shape_error(tasks[t].adapter.string() + ": tensor '" + mt.info->name +
                            "' of task '" + tasks[t].name + "' is not in the base model");
  }
}

std::vector<std::unique_ptr<HfModel>> open_task_models(const ClassicMergeOptions& o) {
  std::vector<std::unique_ptr<HfModel>> models;
  for (const auto& t : o.tasks) models.push_back(std::make_unique<HfModel>(t.adapter));
  return models;
}

namespace {

// mergekit's chat_template: a Jinja text, or "auto" (the template most of the inputs carry, the
// first seen among equals; none where no input carries one, as mergekit, with a warning); its
// named templates ship with mergekit and are not repeated here.
std::optional<std::string> chat_template(const ClassicMergeOptions& o, std::vector<std::string>& warnings) {
  if (!o.chat_template) return std::nullopt;
  const auto& t = *o.chat_template;
  if (t == "auto") {
    std::vector<std::filesystem::path> inputs;
    if (!o.base.empty()) inputs.push_back(o.base);
    for (const auto& task : o.tasks) inputs.push_back(task.adapter);
    for (const auto& sl : o.slices)
      for (const auto& src : sl.sources) inputs.push_back(src.model);
    std::vector<std::pair<std::string, int>> seen;
    for (const auto& dir : inputs)
      if (const auto text = model_chat_template(dir); !text.empty()) {
        auto it = std::find_if(seen.begin(), seen.end(), [&](const auto& s) { return s.first == text; });
        if (it == seen.end()) seen.emplace_back(text, 1);
        else ++it->second;
      }
    if (seen.empty()) {
      warnings.push_back("chat_template: auto, but no input carries a chat template: the merged model "
                         "has none");
      return std::nullopt;
    }
    return std::max_element(seen.begin(), seen.end(),
                            [](const auto& a, const auto& b) { return a.second < b.second; })->first;
  }
  if (t.size() < 256 && t.find('\n') == std::string::npos && t.find('{') == std::string::npos)
    throw usage_error("chat_template: '" + t + "' names one of mergekit's bundled templates; give "
                      "the template's text (or auto)");
  if (t.size() < 20 || t.find('{') == std::string::npos)
    throw usage_error("chat_template: not a Jinja template");
  return t;
}

}  // namespace

ModelOutputOptions model_output_options(const ClassicMergeOptions& o, ClassicMergeReport& report) {
  ModelOutputOptions mo;
  mo.tokenizer_from = o.tokenizer_source;
  mo.chat_template = chat_template(o, report.warnings);
  mo.dtype = o.dtype;
  mo.overwrite = o.overwrite;
  mo.max_shard_bytes = o.max_shard_bytes;
  mo.progress = o.progress;
  mo.extra_files = {classic_recipe_file(o, report), classic_model_card(o, report)};
  mo.peers = o.peers;
  mo.shard_per_rank = o.shard_per_rank;
  return mo;
}

namespace {

// A thread's runs of every part, read run by run (RunValues): kept from call to call, as OpenMP's
// threads are, so that no piece pays for fresh pages.
float* run_values(std::size_t floats) {
  thread_local FloatBuffer values;
  if (values.size() < floats) values.resize(floats);
  return values.data();
}

}  // namespace

void read_finite_parts(std::span<const PartToRead> parts, std::int64_t first, std::size_t count, int threads,
                       bool drop_pages, std::int64_t run, const RunValues& then) {
  for (const auto& p : parts) {
    const auto& info = *p.tensor->info;
    if (!is_float_dtype(info.dtype) || first < 0 || static_cast<std::uint64_t>(first) + count > info.numel()) {
      std::vector<float> into(p.out ? 0 : count);
      p.tensor->file->read_part(info, static_cast<std::uint64_t>(first), {p.out ? p.out : into.data(), count},
                                threads);  // its message
      throw std::logic_error("read_finite_parts: tensor '" + info.name + "' cannot be read as asked");
    }
  }
  // One parallel loop over runs of elements; each run is read from every part in order, so that
  // a part's `minus` (an earlier part's run) is in cache when it is subtracted, and merged by
  // `then` while it still is. One loop per piece instead of one per part and step: the threads
  // meet once. Runs merged as read go to the thread's own memory, not to the piece's: writing
  // the piece's f32 copies cost each input element 8 bytes of memory traffic for its 2 read
  // (task arithmetic on the 2-layer 7b set, 2 cores, five runs alternated: medians 1.83 → 1.63 s
  // wall, 2.84 → 2.22 s of CPU, peak memory 81 → 66 MB, the same bytes). Runs are handed out as
  // threads come free: the writer's thread takes a core now and then, and a thread it displaces
  // leaves its runs to the others (DARE-TIES on the 2-layer 7b set, 2 cores: 4.5–4.8 s → 4.1–4.5
  // s against a static split).
  const i64 n = static_cast<i64>(count), head = first / run, runs = (first + n + run - 1) / run - head;
  std::vector<i64> bad(parts.size(), n);
#pragma omp parallel for num_threads(static_cast<int>(std::clamp<i64>(runs, 1, std::max(threads, 1)))) schedule(dynamic)
  for (i64 c = 0; c < runs; ++c) {
    const i64 begin = std::max<i64>((head + c) * run - first, 0), m = std::min(n, (head + c + 1) * run - first) - begin;
    float* const values = then ? run_values(parts.size() * static_cast<std::size_t>(run)) : nullptr;
    const auto into = [&](std::size_t k) {
      return values ? values + k * static_cast<std::size_t>(run) : parts[k].out + begin;
    };
    bool finite = true;
    for (std::size_t k = 0; k < parts.size(); ++k) {
      const auto& p = parts[k];
      const auto& info = *p.tensor->info;
      const auto* src = p.tensor->file->bytes(info).data() + static_cast<std::size_t>(first + begin) * dtype_size(info.dtype);
      const auto at = static_cast<i64>(widen_finite(info.dtype, src, into(k), static_cast<std::size_t>(m),
                                                    p.minus >= 0 ? into(static_cast<std::size_t>(p.minus)) : nullptr));
      if (at < m) {
        finite = false;
#pragma omp critical(revmerge_read_finite_parts)
        bad[k] = std::min(bad[k], begin + at);
      }
    }
    if (then && finite) then(begin, begin + m, values);
  }
  for (std::size_t k = 0; k < parts.size(); ++k) {
    const auto& p = parts[k];
    const auto& info = *p.tensor->info;
    p.tensor->file->check_intact();
    if (drop_pages) p.tensor->file->evict_part(info, static_cast<std::uint64_t>(first), count);
    if (bad[k] < n)
      throw format_error(p.tensor->file->path().string() + ": tensor '" + info.name +
                         "' holds a non-finite value at element " + std::to_string(first + bad[k]) + " (" +
                         *p.where + ")");
  }
}

std::optional<bool> needs_base(ClassicMethod method) {
  if (method == ClassicMethod::linear || method == ClassicMethod::passthrough) return false;
  if (is_spherical(method)) return std::nullopt;
  return true;
}

namespace {

void check_combine_options(const ClassicMergeOptions& o) {
  if (!is_elementwise(o.method))
    throw usage_error("--method " + to_string(o.method) +
                      " re-factorises LoRA adapters; the inputs are full models");
  const auto recipe = make_recipe(o, Convention::mergekit);
  if (o.method == ClassicMethod::linear && !is_set_per_tensor(o, "weight")) {
    double sum = 0;
    for (const auto w : task_parameters(o, o.tasks.size()).weights) sum += w;
    if (recipe.normalize == Normalize::weight_sum && std::fabs(sum) < 1e-8)
      throw usage_error("--weights: they sum to 0, and linear divides by their sum (pass "
                        "--no-normalize for a plain weighted sum)");
  }
}

// The element-wise methods: the task vectors (linear: the weights) stacked and combined.
void combine_tensor(const ClassicMergeOptions& o, TensorInputs& in, std::span<float> out, int threads) {
  const auto p = task_parameters(o, o.tasks.size());
  const auto recipe = make_recipe(o, Convention::mergekit);
  const i64 n = static_cast<i64>(in.n), count = static_cast<i64>(out.size());
  const std::span<float> stack(in.stacked.data(), static_cast<std::size_t>(n * count));
  if (!in.base.empty()) {  // task vectors, where the tasks' values lie
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i64 j = 0; j < count; ++j)
      for (i64 t = 0; t < n; ++t) stack[t * count + j] -= in.base[j];
  }
  CombineInput ci{stack, n, count, p.weights, p.densities, in.name, o.seed};
  ci.gammas = p.gammas;
  ci.epsilons = p.epsilons;
  ci.shape = in.shape;
  ci.select_topk = o.select_topk.value_or(1.0);
  combine_stack(recipe, ci, out, threads);
  if (!in.base.empty()) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i64 j = 0; j < count; ++j) out[j] += in.base[j];
  }
}

// The same in pieces: each task's thinning gathers its statistics in passes (thinning.hpp),
// then every piece is thinned and combined (SCE: sce.cpp).
class CombinePieces final : public PieceMerger {
 public:
  CombinePieces(const ClassicMergeOptions& o, const std::string& name, const std::vector<i64>& shape,
                std::size_t n, bool has_base)
      : recipe_(make_recipe(o, Convention::mergekit)), params_(task_parameters(o, n)), has_base_(has_base) {
    i64 numel = 1;
    for (const auto d : shape) numel *= d;
    const CombineInput ci{{}, static_cast<i64>(n), numel, params_.weights, params_.densities, name, o.seed,
                          params_.gammas, params_.epsilons, shape};
    for (std::size_t t = 0; t < n; ++t) thinning_.emplace_back(thinning_spec(recipe_, ci, static_cast<i64>(t)), numel);
  }
  i64 granule() const override {
    i64 g = 1;
    for (const auto& th : thinning_) g = std::max(g, th.granule());
    return g;
  }
  std::uint64_t extra_bytes_per_element() const override {
    return recipe_.sparsify == Sparsify::della ? 1 : 0;  // the keep mask of a piece
  }
  std::uint64_t held_bytes(int threads) const override {
    std::uint64_t held = 0;
    for (const auto& th : thinning_) held += th.held_bytes(threads);
    return held;
  }
  bool whole_tensor_saves_work() const override {
    return std::any_of(thinning_.begin(), thinning_.end(), [](const Thinning& th) { return th.whole_tensor_saves_work(); });
  }
  bool wants_pass() const override {
    return std::any_of(thinning_.begin(), thinning_.end(), [](const Thinning& th) { return th.wants_pass(); });
  }
  bool task_vectors() const override { return has_base_; }  // linear: the weights themselves
  void observe(const TensorInputs& in, int threads) override {
    for (std::size_t t = 0; t < thinning_.size(); ++t)
      if (thinning_[t].wants_pass()) thinning_[t].observe(in.first, in.model(t), threads);
  }
  void end_pass() override {
    for (auto& th : thinning_)
      if (th.wants_pass()) th.end_pass();
  }
  void produce(TensorInputs& in, std::span<float> out, int threads) override {
    for (std::size_t t = 0; t < thinning_.size(); ++t) thinning_[t].apply(in.first, in.model(t), threads);
    const i64 count = static_cast<i64>(in.count);
    combine_tasks(recipe_, in.stacked.data(), static_cast<i64>(in.n), count, params_.weights.data(), out, threads,
                  has_base_ ? in.base.data() : nullptr);
  }
  // Each element is combined on its own, and every thinning but DELLA's (rows ranked whole)
  // gathers and applies its decisions run by run.
  bool works_in_runs() const override {
    return std::all_of(thinning_.begin(), thinning_.end(), [](const Thinning& th) { return th.works_in_runs(); });
  }
  void start_runs(int threads) override {
    for (auto& th : thinning_)
      if (th.wants_pass()) th.start_runs(threads);
  }
  void observe_run(const RunInputs& run) override {
    const int slot = omp_get_thread_num();
    for (std::size_t t = 0; t < thinning_.size(); ++t)
      if (thinning_[t].wants_pass()) thinning_[t].observe_run(run.first, run.model(t), slot);
  }
  void produce_run(const RunInputs& run, std::span<float> out) override {
    for (std::size_t t = 0; t < thinning_.size(); ++t) thinning_[t].apply_run(run.first, run.model(t));
    combine_tasks_run(recipe_, run.tasks, static_cast<i64>(run.n), run.stride, params_.weights.data(), out, 0,
                      run.count, has_base_ ? run.base : nullptr);
  }

 private:
  CombineRecipe recipe_;
  TaskParameters params_;
  bool has_base_;
  std::vector<Thinning> thinning_;
};

}  // namespace

std::unique_ptr<PieceMerger> combine_merger(const ClassicMergeOptions& o, const std::string& name,
                                            const std::vector<i64>& shape, std::size_t n, bool has_base) {
  const auto recipe = make_recipe(o, Convention::mergekit);
  if (recipe.select_by_variance || recipe.weights_from_energy) return sce_merger(o, shape, n, has_base);
  return std::make_unique<CombinePieces>(o, name, shape, n, has_base);
}

void check_checkpoint_options(const ClassicMergeOptions& o) {
  const std::string method = "--method " + to_string(o.method);
  const auto base = needs_base(o.method);
  if (base == false && !o.base.empty())
    throw usage_error(o.method == ClassicMethod::linear
                          ? "--base: linear averages the models themselves and does not use a base "
                            "(list the base as a task to include it)"
                          : "--base: passthrough copies one model and does not use a base");
  if (base == true && o.base.empty())
    throw usage_error("--base: " + method +
                      (blends_two_models(o.method) ? " blends the base model with a fine-tune; give it"
                       : o.method == ClassicMethod::model_stock ? " moves the base toward the fine-tunes; give it"
                       : is_selective(o.method) ? " keeps or drops each change to the base; give it"
                                                : " merges task vectors (fine-tune − base); give the base model"));
  if (blends_two_models(o.method)) check_two_model_options(o);
  else if (o.method == ClassicMethod::model_stock) check_model_stock_options(o);
  else if (is_spherical(o.method)) check_spherical_options(o);
  else if (is_selective(o.method)) check_selective_options(o);
  else if (o.method == ClassicMethod::passthrough) check_passthrough_options(o);
  else check_combine_options(o);
}

void merge_whole_tensor(const ClassicMergeOptions& o, TensorInputs& in, std::span<float> out, int threads) {
  if (is_spherical(o.method)) spherical_tensor(o, in, out);
  else if (is_selective(o.method)) selective_tensor(o, in, out, threads);
  else if (is_elementwise(o.method)) combine_tensor(o, in, out, threads);
  else throw std::logic_error("merge_whole_tensor: --method " + to_string(o.method) + " merges in pieces");
}

void check_device(const ClassicMergeOptions& o) {
  if (o.device != Device::cuda) return;
  if (!o.slices.empty()) return;  // each slice is checked with its own tasks as it is planned (slices.cpp)
  if (const auto why = backend_combine_refusal(o); !why.empty()) throw usage_error("--device cuda: " + why);
}

ClassicMergeReport merge_classic_checkpoints(const ClassicMergeOptions& o) {
  std::function<std::unique_ptr<Backend>()> backend;
  if (o.device == Device::cuda) {
    BackendOptions bo;
    bo.threads = o.threads;
    bo.device = o.gpu;
    backend = [bo] { return make_backend(Device::cuda, bo); };
  }
  return merge_classic_checkpoints_on(o, backend);
}

ClassicMergeReport merge_classic_checkpoints_on(const ClassicMergeOptions& o,
                                                const std::function<std::unique_ptr<Backend>()>& make) {
  if (o.full_model)
    throw usage_error("--full-model: the inputs are full models; the output is one already");
  if (o.rank != 0) throw usage_error("--rank: full models merge into a full model, not to a rank");
  check_device(o);
  if (!o.slices.empty()) return merge_layer_slices(o, make);
  check_checkpoint_options(o);
  // Every worker opens every input; one that cannot fails them all.
  std::vector<std::unique_ptr<HfModel>> models;
  std::unique_ptr<HfModel> base;
  agree_on(several(o.peers), [&] {
    models = open_task_models(o);
    if (!o.base.empty()) base = std::make_unique<HfModel>(o.base);
  });
  const HfModel& layout = base ? *base : *models[0];
  check_same_tensors(layout, models, o.tasks);
  check_tensor_parameters(o, layout);
  const int threads = o.threads > 0 ? o.threads : omp_get_max_threads();
  const auto layers = layout.config().num_hidden_layers;
  const auto plan = plan_pieces(models.size(), base != nullptr, o.memory_budget, o.memory_budget != 0);
  const auto merger = [&](const CheckpointTensor& t) {
    // Per-tensor parameters (mergekit's gradients and filters) give each tensor its own.
    const auto& name = t.info->name;
    return piece_merger(options_for_tensor(o, name, layer_position(name, layers)), name, t.info->shape,
                        models.size(), base != nullptr);
  };
  // Every tensor's pieces fitted to the budget before anything is read.
  for (const auto& t : layout.checkpoint().tensors())
    if (is_float_dtype(t.info->dtype))
      check_fits(plan, *merger(t), to_string(o.method), t.info->name, static_cast<std::int64_t>(t.info->numel()), threads);
  TensorInputs in;  // its memory reused from tensor to tensor
  FloatBuffer merged;
  // On a backend (a GPU): its buffers made on the first tensor this worker merges.
  std::unique_ptr<Backend> backend;
  std::unique_ptr<CombineOnBackend> on_backend;
  const PieceProducer produce = [&](const std::string& name, std::uint64_t, const PieceSink& sink) {
    const auto& t = layout.checkpoint().at(name);
    TensorSources src;
    if (base) src = {&base->checkpoint().at(name), "the base", {}, {}};
    for (std::size_t i = 0; i < models.size(); ++i) {
      src.models.push_back(&models[i]->checkpoint().at(name));
      src.model_where.push_back("task '" + o.tasks[i].name + "'");
    }
    if (make) {
      if (!on_backend) {
        backend = make();
        on_backend = std::make_unique<CombineOnBackend>(*backend, models.size(), base != nullptr, plan.max_elements);
      }
      on_backend->merge(options_for_tensor(o, name, layer_position(name, layers)), name, t.info->shape, src, sink);
      return true;
    }
    auto m = merger(t);
    merge_in_pieces(*m, name, t.info->shape, src, plan, in, merged, sink, threads);
    return true;
  };
  ClassicMergeReport report{to_string(o.method), "checkpoint", "mergekit", "model", 0, 0, {}, {}};
  const std::optional<CombineRecipe> recipe =
      is_elementwise(o.method) ? std::optional(make_recipe(o, Convention::mergekit)) : std::nullopt;
  report.parameters = classic_parameters(o, task_parameters(o, o.tasks.size()), recipe ? &*recipe : nullptr, 0,
                                         o.dtype ? std::string(dtype_name(*o.dtype))
                                         : base ? "the base model's" : "the first model's");
  auto mo = model_output_options(o, report);
  mo.threads = threads;
  mo.piece_bytes = copy_piece_bytes(plan);
  mo.write_behind_bytes = plan.write_behind_bytes;
  report.items = write_full_model(layout, o.out, produce, mo);
  return report;
}

}  // namespace revmerge
