#pragma once
// Device discovery through the CUDA runtime; plain C++ so host code can include it.
#include <string>
#include <vector>

#include "revmerge/devices.hpp"

namespace revmerge::cuda {

/// Visible GPUs; empty with `why_none` set when the runtime reports none (no driver, no device).
std::vector<GpuInfo> list_gpus(std::string& why_none) noexcept;

}  // namespace revmerge::cuda
