#pragma once
// Full fine-tunes as what an RMM merge streams: each module's task deltas Δ_t = W_t − W_base
// are compressed by randomized SVD as the module is read, and the factors go straight into the
// staging slot (on a GPU, into the stacks in device memory); no adapter files in between. The
// base's weight comes from its file once per module (the page cache serves it again for each task's
// subtraction).
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/large_buffer.hpp"
#include "methods/lowrank/batched_pt_svd.hpp"
#include "methods/rmm_pipeline.hpp"
#include "revmerge/hf_model.hpp"

namespace revmerge {

struct FullModelSet {
  FullModelInputs inputs;
  std::unique_ptr<HfModel> base;
  std::vector<std::unique_ptr<HfModel>> models;  ///< in task order
  RmmSource source;  ///< refers to this set: keep the set alive while it is used
  LargeBuffer<double> deltas[2];  ///< the reader's, reused from module to module
  BatchedPtSvd* device_svd = nullptr;  ///< where the SVDs run when not on the CPU
  std::map<std::string, const LinearWeight*> by_path;  ///< the base's linear modules
};

/// Refuses full-model inputs without a base or a rank ≥ 1, or with negative sketch settings
/// (usage_error naming the option).
void check_full_model_inputs(const FullModelInputs& in);

/// Opens the base and every task's model folder and plans every linear module of the base.
/// Throws usage_error (rank), io_error / format_error (folders), shape_error (a module missing
/// from a fine-tune or of another shape, named with the folder and tensor).
std::unique_ptr<FullModelSet> open_full_model_set(const std::vector<TaskSource>& tasks,
                                                  const FullModelInputs& inputs);

/// Compresses on `engine` (a GPU) from now on: each module's deltas are formed and solved there,
/// all tasks in one batch as far as the memory plan allows (the source's device_load_bytes and
/// limit_device_load), and the factors go into the merge's stacks in device memory (the
/// source's load_device). `engine` must outlive the set's use and go before its backend.
void attach_device_svd(FullModelSet& set, BatchedPtSvd& engine);

}  // namespace revmerge
