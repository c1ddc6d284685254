#pragma once
// The merges and the compression on a backend the caller makes: the public entry points
// (merge_rmm, merge_rmm_models, compress_checkpoint) pass make_backend of their options'
// device; the tests pass backends of their own, such as one behaving like a discrete device on
// a machine without a GPU.
#include <functional>
#include <memory>

#include "backend/backend.hpp"
#include "revmerge/compress.hpp"
#include "revmerge/rmm.hpp"

namespace revmerge {

/// Makes the backend a merge runs on; called on its own thread while the inputs are opened (a
/// GPU takes a moment to start).
using BackendFactory = std::function<std::unique_ptr<Backend>()>;

BundleManifest merge_rmm_on(const RmmMergeOptions& options, const BackendFactory& make);
BundleManifest merge_rmm_models_on(const RmmMergeOptions& options, const FullModelInputs& inputs,
                                   const BackendFactory& make);

/// compress_checkpoint with the SVDs on `device` through the batched engine, or on the CPU
/// (pt_svd) where `device` is null or its memory is host memory.
CompressReport compress_checkpoint_on(const CompressOptions& options, Backend* device);

}  // namespace revmerge
