// mergekit's MODEL+LORA inputs: each model written once with its adapter merged into it, for the
// merge to read as a model folder like any other (mergekit does the same through PEFT's
// merge_and_unload, into its LoRA cache). The adapted tensors are written in f32: a LoRA's delta
// is usually small beside its weight, so rounding W + s·B·A back to bf16 (8 significant bits)
// keeps few of the delta's own bits, and every method here merges deltas (on the committed bf16
// golden case mergekit's rounding moves 402 of 4 944 elements by a bf16 step).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>

#include "core/atomic_output.hpp"
#include "core/interrupt.hpp"
#include "distributed/agreement.hpp"
#include "methods/classic/classic_internal.hpp"
#include "methods/model_output.hpp"
#include "revmerge/error.hpp"
#include "revmerge/hf_model.hpp"
#include "revmerge/peft.hpp"

namespace revmerge {
namespace fs = std::filesystem;
using i64 = std::int64_t;

namespace {

// Rows of an adapted tensor merged at a time: their f64 sums stay in the cache's reach (8 MiB
// for a 4 096-wide weight) whatever the tensor's size.
constexpr i64 kRowsPerBlock = 256;

// The module each adapted weight gets, checked against the model: a weight of the adapter's
// shape (in × out where the model stores them so, GPT-2's Conv1D), of a float dtype.
std::map<std::string, const LoraModule*> adapted_weights(const HfModel& model, const PeftAdapter& adapter) {
  const auto& config = adapter.config();
  const auto& dir = adapter.dir().string();
  // PEFT goes by the layer's class, whatever the flag says; revmerge knows the class by the
  // model's type, and refuses where the two disagree rather than guess.
  const bool transposed = model.stores_weights_transposed();
  if (config.fan_in_fan_out != transposed)
    throw unsupported_error(dir + ": says fan_in_fan_out: " + (config.fan_in_fan_out ? "true" : "false") +
                            ", but " + model.dir().string() + " (model_type '" + model.config().model_type +
                            "') stores its weights " + (transposed ? "in × out (Conv1D)" : "out × in (nn.Linear)") +
                            "; is this the adapter's base model? (MODEL+LORA)");
  if (!adapter.saved_module_tensors().empty())
    throw unsupported_error(dir + ": holds whole tensors for modules_to_save ('" +
                            adapter.saved_module_tensors().front() +
                            "'); revmerge merges an adapter's LoRA factors into a model, not these "
                            "(MODEL+LORA)");
  std::map<std::string, const LoraModule*> by_tensor;
  for (const auto& m : adapter.modules()) {
    const auto name = m.path + ".weight";
    const auto* w = model.checkpoint().find(name);
    const i64 rows = transposed ? m.in : m.out, cols = transposed ? m.out : m.in;
    if (!w || w->info->shape != std::vector<i64>{rows, cols} || !is_float_dtype(w->info->dtype))
      throw shape_error(model.dir().string() + ": " +
                        (w ? "tensor '" + name + "' is not a float " : "no tensor '" + name + "' of ") +
                        std::to_string(rows) + " × " + std::to_string(cols) + " for the module '" +
                        m.path + "' of " + dir + "; is this the adapter's base model? (MODEL+LORA)");
    by_tensor[name] = &m;
  }
  return by_tensor;
}

}  // namespace

void write_model_with_lora(const fs::path& model_dir, const fs::path& adapter_dir, const fs::path& out,
                           int threads) {
  const HfModel model(model_dir);
  const PeftAdapter adapter(adapter_dir);
  const auto adapted = adapted_weights(model, adapter);
  std::vector<OutputTensor> tensors;
  for (const auto& t : model.checkpoint().tensors())
    tensors.push_back({t.info->name, adapted.count(t.info->name) ? DType::F32 : t.info->dtype, t.info->shape, &t});
  std::vector<float> block;  // a block of rows, reused
  std::vector<double> sum;
  const PieceProducer produce = [&](const std::string& name, std::uint64_t, const PieceSink& sink) {
    const auto it = adapted.find(name);
    if (it == adapted.end()) return false;
    throw_if_interrupted("merge");
    const auto& m = *it->second;
    const auto& w = model.checkpoint().at(name);
    const auto a = adapter.read_a(m), b = adapter.read_b(m);
    const std::vector<double> a64(a.begin(), a.end());
    std::vector<double> sb(b.size());
    std::transform(b.begin(), b.end(), sb.begin(), [&](float x) { return m.scale * x; });
    // W + (s·B)·A in f64 — W + ((s·B)·A)ᵀ = W + Aᵀ(s·B)ᵀ for a Conv1D's in × out weight — a
    // block of rows at a time, rounded once to f32: the model's 16- and 32-bit weights are exact
    // in f32, and its pages leave the resident set block by block.
    const bool transposed = model.stores_weights_transposed();
    const i64 height = transposed ? m.in : m.out, width = transposed ? m.out : m.in;
    const int r = static_cast<int>(m.rank);
    for (i64 row = 0; row < height; row += kRowsPerBlock) {
      const i64 rows = std::min(kRowsPerBlock, height - row);
      const auto first = static_cast<std::uint64_t>(row * width), count = static_cast<std::uint64_t>(rows * width);
      block.resize(count);
      w.file->read_part(*w.info, first, block, threads);
      sum.assign(block.begin(), block.end());
      if (transposed)  // rows row … of Aᵀ (columns of A, r × in) times (s·B)ᵀ (B out × r)
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(width), r, 1.0,
                    a64.data() + row, static_cast<int>(m.in), sb.data(), r, 1.0, sum.data(), static_cast<int>(width));
      else
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows), static_cast<int>(width), r,
                    1.0, sb.data() + row * m.rank, r, a64.data(), static_cast<int>(m.in), 1.0, sum.data(),
                    static_cast<int>(width));
      for (std::uint64_t i = 0; i < count; ++i) {
        block[i] = static_cast<float>(sum[i]);
        if (!std::isfinite(block[i]))
          throw format_error(model_dir.string() + " + " + adapter_dir.string() + ": tensor '" + name +
                             "' with the adapter merged in holds a value that is not finite in f32 (row " +
                             std::to_string(row + static_cast<i64>(i) / width) + ")");
      }
      w.file->check_intact();
      w.file->evict_part(*w.info, first, count);
      sink(first, block);
    }
    return true;
  };
  ModelOutputOptions mo;
  mo.threads = threads;
  write_model(model, tensors, out, produce, mo);
}

ClassicMergeReport merge_with_loras_applied(const ClassicMergeOptions& o) {
  refuse_existing(o.out, o.overwrite);  // before any model is written
  // The merged models' folder, never committed: removed when the merge returns or throws.
  // Worker 0 writes it, where there are several; they read it from the same place.
  Peers* const peers = several(o.peers);
  std::optional<StagedDir> scratch;
  agree_on(peers, [&] {
    if (peers && peers->rank() != 0) return;
    scratch.emplace(o.out.string() + ".lora-applied", /*overwrite=*/true);
    std::size_t i = 0;
    for (const auto& [given, w] : o.with_lora) {
      throw_if_interrupted("merge");
      write_model_with_lora(w.model, w.adapter, scratch->path() / std::to_string(i++), o.threads);
    }
  });
  const fs::path where = peers ? fs::path(peers->all_gather(scratch ? scratch->path().string() : std::string())[0])
                               : scratch->path();
  ClassicMergeOptions run = o;
  run.with_lora.clear();
  std::map<fs::path, fs::path> written;  // as given → the folder written
  std::size_t i = 0;
  for (const auto& [given, w] : o.with_lora) {
    written[given] = where / std::to_string(i++);
    run.input_origins[written[given]] = w;
  }
  const auto swap = [&](fs::path& path) {
    if (const auto it = written.find(path); it != written.end()) path = it->second;
  };
  for (auto& t : run.tasks) swap(t.adapter);
  swap(run.base);
  swap(run.tokenizer_source);
  for (auto& s : run.slices) {
    swap(s.base);
    for (auto& src : s.sources) swap(src.model);
  }
  // Without --dtype a model is written in its base's (or first model's) dtypes: the model's own,
  // not the f32 its adapted tensors were given here.
  const fs::path decides = !o.base.empty() ? o.base
                           : !o.slices.empty() && !o.slices.front().sources.empty() ? o.slices.front().sources.front().model
                           : !o.tasks.empty() ? o.tasks.front().adapter
                                              : fs::path();
  if (const auto it = o.with_lora.find(decides); !run.dtype && it != o.with_lora.end()) {
    const HfModel model(it->second.model);
    const auto& linears = model.linears();
    const DType d = linears.empty() ? DType::F32 : model.checkpoint().at(linears.front().tensor).info->dtype;
    run.dtype = d == DType::BF16 || d == DType::F16 ? d : DType::F32;
  }
  return merge_classic(run);
}

}  // namespace revmerge
