#pragma once
// The one place that decides which backends exist and which one a run gets.
#include <memory>
#include <string>
#include <string_view>

#include "backend/backend.hpp"
#include "revmerge/devices.hpp"

namespace revmerge {

/// Parses "cpu", "cuda" or "auto"; throws usage_error naming `option` otherwise.
Device parse_device_option(std::string_view value, std::string_view option = "--device");

/// Why the CUDA backend cannot run on GPU `gpu` here (not built, no driver, no such GPU, no
/// kernels in this build for its architecture); empty when it can.
std::string cuda_unavailable_reason(int gpu = 0);

/// The backend for `choice`: `automatic` picks CUDA when a GPU is usable, else the CPU.
/// Asking for `cuda` where it cannot run throws device_error with the reason.
std::unique_ptr<Backend> make_backend(Device choice, const BackendOptions& options);

}  // namespace revmerge
