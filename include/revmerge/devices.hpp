#pragma once
/// \file
/// Which compute backends this build has, and which GPUs are visible now.
#include <cstdint>
#include <string>
#include <vector>

namespace revmerge {

/// Where compute runs, as chosen with --device: `automatic` takes CUDA when a GPU is usable.
enum class Device { cpu, cuda, automatic };

/// One visible CUDA device.
struct GpuInfo {
  int index = 0;
  std::string name;
  std::uint64_t memory_bytes = 0;
  int compute_major = 0, compute_minor = 0;
};

/// The backends compiled in and the GPUs the CUDA runtime reports.
struct DeviceReport {
  bool cuda_built = false;      ///< the CUDA backend is part of this build
  std::vector<GpuInfo> gpus;    ///< empty without a usable GPU
  std::string why_no_gpu;       ///< the runtime's reason when `gpus` is empty
};

/// Asks the CUDA runtime (when built) for devices. Never throws: a machine without a driver
/// or GPU is a normal answer.
DeviceReport probe_devices();

}  // namespace revmerge
