#pragma once
// Device discovery through the CUDA runtime; plain C++ so host code can include it.
#include <string>
#include <vector>

#include "revmerge/devices.hpp"

namespace revmerge::cuda {

/// Visible GPUs; empty with `why_none` set when the runtime reports none (no driver, no device).
std::vector<GpuInfo> list_gpus(std::string& why_none) noexcept;

/// The kernels this build holds: "sm_80, sm_86, sm_89, sm_90 + PTX 9.0".
std::string build_kernels();

}  // namespace revmerge::cuda
