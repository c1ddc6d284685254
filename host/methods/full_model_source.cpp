#include "methods/full_model_source.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>

#include "core/interrupt.hpp"
#include "methods/lowrank/pt_svd.hpp"
#include "revmerge/error.hpp"
#include "scheduler/double_buffered.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

std::uint64_t tensor_bytes(const HfModel& m, const std::string& tensor) {
  return m.checkpoint().at(tensor).info->nbytes();
}

// Task t's factors A_t = U_kᵀ and B_t = V_k S_k into the module's stacks (A n × r × in,
// B n × out × r), rows of A and columns of B past the rank zero.
void place_factors(const TruncatedSvd& svd, const LinearWeight& w, std::size_t t, i64 r, float* a,
                   float* b) {
  lora_factors(svd, svd.k, w, a + static_cast<i64>(t) * r * w.in,
               b + static_cast<i64>(t) * w.out * r, r);
}

// The file bytes one module's load reads: the base's tensor and every fine-tune's.
std::uint64_t module_bytes(const FullModelSet& set, const LinearWeight& w) {
  std::uint64_t bytes = tensor_bytes(*set.base, w.tensor);
  for (const auto& m : set.models) bytes += tensor_bytes(*m, w.tensor);
  return bytes;
}

// One module's stacks from the fine-tunes: per task Δ_t, its randomized SVD Δ_t ≈ V_k S_k U_kᵀ,
// and the factors `revmerge compress` writes, with scale 1. The next task's Δ is formed
// (conversion and subtraction, one core) on a helper thread while the SVD (the BLAS threads)
// works on this one.
std::uint64_t load_compressed(FullModelSet& set, const LinearWeight& w, i64 r, float* a, float* b) {
  const auto& in = set.inputs;
  const auto count = static_cast<std::size_t>(w.in * w.out);
  double_buffered(
      set.models.size(),
      [&](std::size_t t, int buffer) {
        throw_if_interrupted("merge");
        return read_delta_into(*set.base, *set.models[t], w, set.deltas[buffer].first(count));
      },
      [&](std::size_t t, int buffer, double) {
        const auto svd = pt_svd(set.deltas[buffer].first(count), w, in.rank, in.oversampling,
                                in.power_iterations, 0);
        place_factors(svd, w, t, r, a, b);
      });
  return module_bytes(set, w);
}

// The same on the device engine, all tasks at once, into stacks in device memory: the deltas,
// their SVDs and the factors never pass through the host.
std::uint64_t load_on_device(FullModelSet& set, const LinearWeight& w, i64 r, float* a, float* b) {
  throw_if_interrupted("merge");
  const auto& in = set.inputs;
  std::vector<const HfModel*> models;
  for (const auto& m : set.models) models.push_back(m.get());
  const BatchedPtSvd::Stacks stacks{a, b, r};
  batched_pt_svd(*set.device_svd, *set.base, models, w,
                 pt_svd_options(w, in.rank, in.oversampling, in.power_iterations, 0), &stacks);
  return module_bytes(set, w);
}

}  // namespace

void check_full_model_inputs(const FullModelInputs& in) {
  if (in.base.empty()) throw usage_error("--base: full fine-tunes are merged as task vectors; give the base model");
  if (in.rank < 1) throw usage_error("--rank: full fine-tunes are compressed to this rank first; give it");
  if (in.oversampling < 0) throw usage_error("--oversampling: must be ≥ 0");
  if (in.power_iterations < 0) throw usage_error("--power-iterations: must be ≥ 0");
}

std::unique_ptr<FullModelSet> open_full_model_set(const std::vector<TaskSource>& tasks,
                                                  const FullModelInputs& in) {
  check_full_model_inputs(in);
  auto set = std::make_unique<FullModelSet>();
  set->inputs = in;
  set->base = std::make_unique<HfModel>(in.base);
  for (const auto& t : tasks) set->models.push_back(std::make_unique<HfModel>(t.adapter));
  const auto& linears = set->base->linears();
  if (linears.empty())
    throw shape_error(in.base.string() + ": no linear module inside numbered blocks to merge");
  std::map<std::string, const LinearWeight*> by_path;
  auto& source = set->source;
  std::uint64_t largest = 0;
  for (const auto& w : linears) {
    for (std::size_t t = 0; t < tasks.size(); ++t) {
      const auto& model = *set->models[t];
      check_fine_tune_tensor(model, w, "the fine-tune of task '" + tasks[t].name + "'");
      source.bytes_total += tensor_bytes(model, w.tensor);
    }
    source.bytes_total += tensor_bytes(*set->base, w.tensor);
    const i64 k = std::min({in.rank, w.in, w.out});
    PlannedModule pm{w.path, w.layer, w.name, w.in, w.out, k, {}, std::vector<i64>(tasks.size(), k)};
    source.plan.push_back(std::move(pm));
    by_path[w.path] = &w;
    // Two deltas in f64, the power iterations' f32 copy of one, and the sketch's f64 matrices
    // (Ω, Y, Z, B = QᵀA and its SVD, each at most (in + out) × l).
    const i64 l = std::min(in.rank + in.oversampling, std::min(w.in, w.out));
    const auto bytes = static_cast<std::uint64_t>(20 * w.in * w.out + 8 * 6 * l * (w.in + w.out));
    largest = std::max(largest, bytes);
  }
  source.load_bytes = largest;
  set->by_path = std::move(by_path);
  FullModelSet* self = set.get();
  const auto n = static_cast<i64>(tasks.size());
  // The factors come as padded f32 stacks (scale 1), computed where they are staged.
  source.input_dtype = linears.front().dtype;
  for (const auto& pm : source.plan)
    source.factor_bytes += static_cast<std::uint64_t>(n * pm.rank * (pm.in + pm.out)) *
                           dtype_size(source.input_dtype);
  source.staged_bytes = [n](const PlannedModule& pm) {
    return f32_stacks_layout(n, pm.rank, pm.in, pm.out).bytes;
  };
  source.load = [self, n](const PlannedModule& pm, std::byte* block) {
    auto staged = f32_stacks_layout(n, pm.rank, pm.in, pm.out);
    auto* a = reinterpret_cast<float*>(block);
    staged.file_bytes = load_compressed(*self, *self->by_path.at(pm.path), pm.rank, a,
                                        reinterpret_cast<float*>(block + staged.tasks[0].b));
    return staged;
  };
  source.nonfinite_message = [self](const PlannedModule& pm, unsigned long long key) {
    return self->inputs.base.string() + ": module '" + pm.path + "': the compressed delta of task " +
           std::to_string(key >> 49) + " is not finite";
  };
  return set;
}

void attach_device_svd(FullModelSet& set, BatchedPtSvd& engine) {
  set.device_svd = &engine;
  FullModelSet* self = &set;
  const auto n = static_cast<i64>(set.models.size());
  set.source.load_device = [self, n](const PlannedModule& pm, std::byte* block) {
    auto staged = f32_stacks_layout(n, pm.rank, pm.in, pm.out);
    staged.file_bytes = load_on_device(*self, *self->by_path.at(pm.path), pm.rank,
                                       reinterpret_cast<float*>(block),
                                       reinterpret_cast<float*>(block + staged.tasks[0].b));
    return staged;
  };
  // The modules' shapes as the engine runs them (m × n = cols × rows of the files' tensors), the
  // widest element of the files, and the host memory of a load: the two pinned buffers the
  // weights pass through.
  std::set<std::pair<i64, i64>> shapes;
  std::uint64_t largest = 0;
  std::size_t element = 1;
  for (const auto& w : set.base->linears()) {
    shapes.insert({w.cols(), w.rows()});
    largest = std::max(largest, static_cast<std::uint64_t>(w.in * w.out));
    element = std::max(element, dtype_size(set.base->checkpoint().at(w.tensor).info->dtype));
    for (const auto& m : set.models)
      element = std::max(element, dtype_size(m->checkpoint().at(w.tensor).info->dtype));
  }
  set.source.load_bytes = 2 * largest * element;
  // The most any module's batch holds: modules of one size differ in the sketch's side (an MLP's
  // up and down projections), so every shape is asked, not only the largest.
  const RandomizedSvdOptions options{set.inputs.rank, set.inputs.oversampling, set.inputs.power_iterations, 0, 0};
  set.source.device_load_bytes = [&engine, shapes, options, element](i64 batch) {
    std::uint64_t most = 0;
    for (const auto& [m, n] : shapes)
      most = std::max<std::uint64_t>(most, engine.work_bytes(batch, m, n, options, element));
    return most;
  };
  set.source.limit_device_load = [&engine](std::uint64_t bytes) { engine.limit_memory(bytes); };
}

}  // namespace revmerge
