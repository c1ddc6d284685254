#pragma once
// The CUDA backend's factory: plain C++, so the host registry can include it.
#include <memory>

#include "backend/backend.hpp"

namespace revmerge {

/// A backend on CUDA device `options.device`: cuBLAS, cuSOLVER and Thrust on its own stream,
/// device memory from a stream-ordered caching pool (cudaMallocAsync where the device has memory
/// pools, else cudaMalloc; never managed memory): a block released while work queued on the
/// backend's streams may touch it is not reused before that work has run (a caller's own
/// stream is not covered: work queued there must have run first). Buffers it hands out
/// must be released before it is destroyed. Throws device_error when the device is unusable.
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options);

}  // namespace revmerge
