// The classic methods on full checkpoints, mergekit's definitions: every floating-point tensor
// of the base merged from the task vectors δᵢ = Wᵢ − W_base (linear: from the weights
// themselves), written as a full model beside the base's config.
#include <omp.h>

#include <cmath>
#include <memory>

#include "methods/classic/classic_internal.hpp"
#include "methods/classic/combine.hpp"
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

ModelOutputOptions model_output_options(const ClassicMergeOptions& o, const ClassicMergeReport& report) {
  ModelOutputOptions mo;
  mo.dtype = o.dtype;
  mo.overwrite = o.overwrite;
  mo.progress = o.progress;
  mo.extra_files = {classic_recipe_file(o, report)};
  return mo;
}

std::vector<float> read_finite(const CheckpointTensor& t, const std::string& where) {
  std::vector<float> v(static_cast<std::size_t>(t.info->numel()));
  t.file->read(*t.info, v);
  for (std::size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]))
      throw format_error(t.file->path().string() + ": tensor '" + t.info->name +
                         "' holds a non-finite value at element " + std::to_string(i) + " (" +
                         where + ")");
  return v;
}

ClassicMergeReport merge_classic_checkpoints(const ClassicMergeOptions& o) {
  if (o.full_model)
    throw usage_error("--full-model: the inputs are full models; the output is one already");
  if (o.rank != 0) throw usage_error("--rank: full models merge into a full model, not to a rank");
  check_tensor_parameters(o, HfModel(o.base.empty() ? o.tasks[0].adapter : o.base));
  if (blends_two_models(o.method)) return merge_two_model_checkpoints(o);
  if (o.method == ClassicMethod::model_stock) return merge_model_stock_checkpoints(o);
  if (is_spherical(o.method)) return merge_spherical_checkpoints(o);
  if (is_selective(o.method)) return merge_selective_checkpoints(o);
  if (!is_elementwise(o.method))
    throw usage_error("--method " + to_string(o.method) +
                      " re-factorises LoRA adapters; the inputs are full models");
  const bool linear = o.method == ClassicMethod::linear;
  if (linear && !o.base.empty())
    throw usage_error("--base: linear averages the models themselves and does not use a base "
                      "(list the base as a task to include it)");
  if (!linear && o.base.empty())
    throw usage_error("--base: --method " + to_string(o.method) +
                      " merges task vectors (fine-tune − base); give the base model");
  const auto p = task_parameters(o, o.tasks.size());
  const auto recipe = make_recipe(o, Convention::mergekit);
  const auto models = open_task_models(o);
  const auto base = linear ? nullptr : std::make_unique<HfModel>(o.base);
  const HfModel& layout = linear ? *models[0] : *base;
  check_same_tensors(layout, models, o.tasks);
  if (linear) {
    double sum = 0;
    for (const auto w : p.weights) sum += w;
    if (recipe.normalize == Normalize::weight_sum && std::fabs(sum) < 1e-8)
      throw usage_error("--weights: they sum to 0, and linear divides by their sum (pass "
                        "--no-normalize for a plain weighted sum)");
  }
  const int threads = o.threads > 0 ? o.threads : omp_get_max_threads();
  const i64 n = static_cast<i64>(models.size());
  std::vector<float> stack;
  const auto layers = layout.config().num_hidden_layers;
  const auto produce = [&](const std::string& name, std::vector<float>& values) {
    const auto& lt = layout.checkpoint().at(name);
    const i64 count = static_cast<i64>(lt.info->numel());
    const auto base_values = linear ? std::vector<float>{} : read_finite(lt, "the base");
    stack.resize(static_cast<std::size_t>(n * count));
    for (i64 t = 0; t < n; ++t) {
      const auto w = read_finite(models[t]->checkpoint().at(name), "task '" + o.tasks[t].name + "'");
      for (i64 j = 0; j < count; ++j)
        stack[t * count + j] = linear ? w[j] : w[j] - base_values[j];
    }
    // Per-tensor parameters (mergekit's gradients and filters) give this tensor its own.
    const bool own = has_tensor_parameters(o);
    const auto to = options_for_tensor(o, name, layer_position(name, layers));
    const auto tp = own ? task_parameters(to, to.tasks.size()) : p;
    const auto tr = own ? make_recipe(to, Convention::mergekit) : recipe;
    CombineInput in{stack, n, count, tp.weights, tp.densities, name, o.seed};
    in.gammas = tp.gammas;
    in.epsilons = tp.epsilons;
    in.shape = lt.info->shape;
    in.select_topk = to.select_topk.value_or(1.0);
    combine_stack(tr, in, values, threads);
    if (!linear)
      for (i64 j = 0; j < count; ++j) values[j] += base_values[j];
    return true;
  };
  ClassicMergeReport report{to_string(o.method), "checkpoint", "mergekit", "model", 0, 0, {}, {}};
  report.parameters = classic_parameters(o, p, &recipe, 0,
                                         o.dtype ? std::string(dtype_name(*o.dtype)) : linear ? "the first model's" : "the base model's");
  report.items = write_full_model(layout, o.out, produce, model_output_options(o, report));
  return report;
}

}  // namespace revmerge
