// mergekit's layer slices and passthrough: a model whose blocks are stacked from ranges of the
// inputs' blocks, each output block merged from its slice's sources with the method (or, with
// passthrough, copied from the one source). As mergekit plans it:
//  - a slice's sources have the same number of blocks; block k of the slice merges block
//    first + k of every source, at layer position t = k / (length − 1) within the slice (1 for a
//    slice of one block) for parameter gradients;
//  - the tensors outside the blocks come from the first slice's sources (embeddings: names with
//    "embed") or the last slice's (the final norm, the head), at t = 0;
//  - parameters: a source's own, then its slice's, then the config's;
//  - the base of a slice (its own, or the merge's) is the source naming that model; the others
//    are its tasks;
//  - config.json comes from the base (or the first slice's first source) with num_hidden_layers
//    the stacked count (and `layer_types`, where present, taken from each block's source: mergekit
//    leaves it as it was).
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <omp.h>

#include <functional>
#include <map>
#include <memory>

#include "backend/backend.hpp"
#include "distributed/agreement.hpp"
#include "methods/classic/classic_internal.hpp"
#include "methods/classic/combine.hpp"
#include "methods/classic/combine_on_backend.hpp"
#include "methods/classic/piece_merge.hpp"
#include "methods/model_output.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"

namespace fs = std::filesystem;

namespace revmerge {
namespace {

using i64 = std::int64_t;

// The tensor name with its block index replaced (the first all-digit component, as
// split_module_path finds it).
std::string with_layer(const std::string& name, i64 layer) {
  const auto rest = split_module_path(name).second;
  const auto dot = name.size() - rest.size() - 1;  // the '.' after the index
  const auto start = name.rfind('.', dot - 1);     // the '.' before it, if any
  return name.substr(0, start == std::string::npos ? 0 : start + 1) + std::to_string(layer) + "." + rest;
}

bool same_model(const fs::path& a, const fs::path& b) {
  std::error_code ea, eb;
  return fs::weakly_canonical(a, ea) == fs::weakly_canonical(b, eb);
}

// One output tensor: which slice's options merge it, at which t, from which input tensors
// (index into the slice's sources, name in that source).
struct PlannedTensor {
  std::size_t slice = 0;
  double t = 0;
  std::vector<std::int64_t> shape;
  std::vector<std::string> source_names;
};

}  // namespace

void check_passthrough_options(const ClassicMergeOptions& o) {
  if (o.tasks.size() != 1)
    throw usage_error("--method passthrough copies one model; got " + std::to_string(o.tasks.size()) +
                      " (stack several with a config's slices)");
  refuse_weighting_options(o);
}

namespace {

// The one model's values, scaled (kernels/elementwise.hpp's scale step, a backend's too).
class PassthroughPieces final : public PieceMerger {
 public:
  explicit PassthroughPieces(double scale) : scale_(scale) {}
  void produce(TensorInputs& in, std::span<float> out, int threads) override {
    run_host_step(passthrough_step(in.model(0).data(), static_cast<std::int64_t>(out.size()), scale_, out.data()),
                  threads);
  }

 private:
  double scale_;
};

}  // namespace

kernels::ElementwiseStep passthrough_step(float* x, std::int64_t count, double scale, float* out) {
  kernels::ElementwiseStep st;
  st.kind = kernels::ElementwiseKind::scale;
  st.count = count;
  st.x = x;
  st.factor = scale;
  st.out = out;
  return st;
}

std::unique_ptr<PieceMerger> passthrough_merger(const ClassicMergeOptions& o) {
  return std::make_unique<PassthroughPieces>(task_parameters(o, 1).scales[0]);
}

ClassicMergeReport merge_layer_slices(const ClassicMergeOptions& o,
                                      const std::function<std::unique_ptr<Backend>()>& make) {
  // The models, each opened once.
  std::map<std::string, std::unique_ptr<HfModel>> opened;
  const auto model = [&](const fs::path& p) -> const HfModel& {
    auto& m = opened[fs::weakly_canonical(p).string()];
    if (!m) m = std::make_unique<HfModel>(p);
    return *m;
  };
  // Every worker opens every input first; one that cannot fails them all.
  agree_on(several(o.peers), [&] {
    for (const auto& sl : o.slices)
      for (const auto& src : sl.sources) model(src.model);
    if (!o.base.empty()) model(o.base);
  });
  // Each slice's own options: its tasks, base and parameters.
  std::vector<ClassicMergeOptions> slice_options;
  std::vector<std::vector<std::size_t>> task_source;  // slice → source index of each task
  std::vector<std::optional<std::size_t>> base_source;
  i64 layers = 0;
  std::vector<i64> layer_sources;
  for (std::size_t s = 0; s < o.slices.size(); ++s) {
    const auto& sl = o.slices[s];
    const auto where = fmt::format("slices[{}]", s);
    if (sl.sources.empty()) throw usage_error(where + ": no sources");
    const i64 length = sl.sources[0].end - sl.sources[0].first;
    for (std::size_t i = 0; i < sl.sources.size(); ++i) {
      const auto& src = sl.sources[i];
      const auto sw = fmt::format("{}.sources[{}] ({})", where, i, src.model.string());
      const auto available = model(src.model).config().num_hidden_layers;
      if (src.first < 0 || src.end <= src.first || src.end > available)
        throw usage_error(fmt::format("{}: layer_range [{}, {}) is not inside its {} layers", sw,
                                      src.first, src.end, available));
      if (src.end - src.first != length)
        throw usage_error(fmt::format("{}: {} layers, but the slice's first source has {}; a "
                                      "slice's sources have the same number of layers", sw,
                                      src.end - src.first, length));
    }
    ClassicMergeOptions so = o;
    so.slices.clear();
    so.tasks.clear();
    so.base = sl.base.empty() ? o.base : sl.base;
    so.task_tensor_parameters.clear();
    for (const auto& [key, setting] : sl.parameters) so.tensor_parameters[key] = setting;  // the slice's first
    std::vector<std::size_t> tasks;
    std::optional<std::size_t> base;
    for (std::size_t i = 0; i < sl.sources.size(); ++i) {
      const auto& src = sl.sources[i];
      if (!so.base.empty() && needs_base(o.method) != false && same_model(src.model, so.base) && !base) {
        base = i;
        continue;
      }
      tasks.push_back(i);
      so.tasks.push_back({fmt::format("{}[{}]", src.model.filename().string(), i), src.model});
      so.task_tensor_parameters.push_back(src.parameters);
    }
    if (needs_base(o.method) == true && !base)
      throw usage_error(where + ": --method " + to_string(o.method) +
                        " needs the base among the slice's sources (" +
                        (so.base.empty() ? "no base_model given" : "'" + so.base.string() + "' is not one") + ")");
    if (!base) so.base.clear();
    try {
      check_options_fit_method(so);
      check_checkpoint_options(so);
    } catch (const usage_error& e) {
      throw usage_error(where + ": " + e.what());
    }
    if (make)
      if (const auto why = backend_combine_refusal(so); !why.empty())
        throw usage_error("--device cuda: " + where + ": " + why);
    for (i64 k = 0; k < length; ++k) layer_sources.push_back(sl.sources[0].first + k);
    layers += length;
    slice_options.push_back(std::move(so));
    task_source.push_back(std::move(tasks));
    base_source.push_back(base);
  }

  // The output's tensors, planned from each slice's first source.
  const HfModel& first = model(o.slices.front().sources[0].model);
  const HfModel& last = model(o.slices.back().sources[0].model);
  std::vector<OutputTensor> tensors;
  std::map<std::string, PlannedTensor> plan;
  const auto add = [&](const CheckpointTensor& t, const std::string& out_name, std::size_t s,
                       double pos, const std::function<std::string(std::size_t)>& input_name) {
    PlannedTensor p{s, pos, t.info->shape, {}};
    for (std::size_t i = 0; i < o.slices[s].sources.size(); ++i) {
      const auto& src = o.slices[s].sources[i];
      const auto name = input_name(i);
      const auto* it = model(src.model).checkpoint().find(name);
      if (!it || it->info->shape != t.info->shape)
        throw shape_error(src.model.string() + ": " + (it ? "tensor '" + name + "' has another shape than" : "no tensor '" + name + "' for") +
                          " the output's '" + out_name + "'");
      p.source_names.push_back(name);
    }
    auto dtype = t.info->dtype;
    if (o.dtype && is_float_dtype(dtype)) dtype = *o.dtype;
    tensors.push_back({out_name, dtype, t.info->shape, &t});
    plan.emplace(out_name, std::move(p));
  };
  const auto outside_blocks = [](const CheckpointTensor& t) { return split_module_path(t.info->name).first < 0; };
  for (const auto& t : first.checkpoint().tensors())
    if (outside_blocks(t) && t.info->name.find("embed") != std::string::npos)
      add(t, t.info->name, 0, 0.0, [&](std::size_t) { return t.info->name; });
  i64 out_layer = 0;
  for (std::size_t s = 0; s < o.slices.size(); ++s) {
    const auto& sl = o.slices[s];
    const i64 length = sl.sources[0].end - sl.sources[0].first;
    const auto& head = model(sl.sources[0].model);
    for (i64 k = 0; k < length; ++k, ++out_layer) {
      const double pos = length > 1 ? double(k) / double(length - 1) : 1.0;
      for (const auto& t : head.checkpoint().tensors())
        if (split_module_path(t.info->name).first == sl.sources[0].first + k)
          add(t, with_layer(t.info->name, out_layer), s, pos,
              [&](std::size_t i) { return with_layer(t.info->name, sl.sources[i].first + k); });
    }
  }
  for (const auto& t : last.checkpoint().tensors())
    if (outside_blocks(t) && t.info->name.find("embed") == std::string::npos)
      add(t, t.info->name, o.slices.size() - 1, 0.0, [&](std::size_t) { return t.info->name; });

  const int threads = o.threads > 0 ? o.threads : omp_get_max_threads();
  // Pieces sized for the slice with the most inputs.
  std::size_t most = 0;
  bool any_base = false;
  for (std::size_t s = 0; s < o.slices.size(); ++s) {
    most = std::max(most, task_source[s].size());
    any_base = any_base || base_source[s].has_value();
  }
  const auto pieces = plan_pieces(most, any_base, o.memory_budget, o.memory_budget != 0);
  const auto merger = [&](const std::string& name) {
    const auto& p = plan.at(name);
    return piece_merger(options_for_tensor(slice_options[p.slice], name, p.t), name, p.shape,
                        task_source[p.slice].size(), base_source[p.slice].has_value());
  };
  for (const auto& t : tensors)
    if (is_float_dtype(t.dtype)) {
      std::int64_t numel = 1;
      for (const auto d : t.shape) numel *= d;
      check_fits(pieces, *merger(t.name), to_string(o.method), t.name, numel, threads);
    }
  TensorInputs in;  // its memory reused from tensor to tensor
  FloatBuffer merged;
  // On a backend: one, made at the first tensor, and buffers for one slice shape (how many
  // tasks, whether a base) at a time — the tensors come slice by slice, so they are remade
  // about once a slice, and never two sets held.
  std::unique_ptr<Backend> backend;
  std::unique_ptr<CombineOnBackend> on_backend;
  std::pair<std::size_t, bool> backend_shape;
  const PieceProducer produce = [&](const std::string& name, std::uint64_t, const PieceSink& sink) {
    const auto& p = plan.at(name);
    const auto& sl = o.slices[p.slice];
    const auto source = [&](std::size_t i) { return &model(sl.sources[i].model).checkpoint().at(p.source_names[i]); };
    TensorSources src;
    if (const auto b = base_source[p.slice]) src = {source(*b), sl.sources[*b].model.string(), {}, {}};
    for (const auto i : task_source[p.slice]) {
      src.models.push_back(source(i));
      src.model_where.push_back(sl.sources[i].model.string());
    }
    if (make) {
      if (!backend) backend = make();
      const std::pair shape{src.models.size(), src.base != nullptr};
      if (!on_backend || shape != backend_shape) {
        on_backend.reset();  // its memory back before the next set is taken
        on_backend = std::make_unique<CombineOnBackend>(*backend, shape.first, shape.second, pieces.max_elements);
        backend_shape = shape;
      }
      on_backend->merge(options_for_tensor(slice_options[p.slice], name, p.t), name, p.shape, src, sink);
      return true;
    }
    auto m = merger(name);
    merge_in_pieces(*m, name, p.shape, src, pieces, in, merged, sink, threads);
    return true;
  };

  ClassicMergeReport report{to_string(o.method), "slices", "mergekit", "model", 0, 0, {}, {}};
  const auto& so = slice_options.front();
  const std::optional<CombineRecipe> recipe =
      is_elementwise(o.method) ? std::optional(make_recipe(so, Convention::mergekit)) : std::nullopt;
  report.parameters = classic_parameters(so, task_parameters(so, so.tasks.size()),
                                         recipe ? &*recipe : nullptr, 0,
                                         o.dtype ? std::string(dtype_name(*o.dtype)) : "the inputs'");
  std::vector<std::string> parts;
  for (const auto& sl : o.slices) {
    std::vector<std::string> srcs;
    for (const auto& src : sl.sources)
      srcs.push_back(fmt::format("{} [{}, {})", src.model.string(), src.first, src.end));
    parts.push_back(fmt::format("{}", fmt::join(srcs, " + ")));
  }
  report.parameters.insert(report.parameters.begin(),
                           {"slices", fmt::format("{} layers from {}", layers, fmt::join(parts, "; "))});
  auto mo = model_output_options(o, report);
  mo.threads = threads;
  mo.piece_bytes = copy_piece_bytes(pieces);
  mo.write_behind_bytes = pieces.write_behind_bytes;
  mo.num_hidden_layers = layers;
  mo.layer_sources = layer_sources;
  const HfModel& config_from = o.base.empty() ? first : model(o.base);
  report.items = write_model(config_from, tensors, o.out, produce, mo);
  return report;
}

}  // namespace revmerge
