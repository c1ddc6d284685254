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
  /// The build holds kernels this GPU can run (its own machine code, or PTX it can compile);
  /// `--device auto` never chooses one without.
  bool has_kernels = false;
};

/// The backends compiled in and the GPUs the CUDA runtime reports.
struct DeviceReport {
  bool cuda_built = false;      ///< the CUDA backend is part of this build
  std::vector<GpuInfo> gpus;    ///< empty without a usable GPU
  std::string why_no_gpu;       ///< the runtime's reason when `gpus` is empty
  std::string kernels;          ///< what the build holds: "sm_80, sm_86, sm_90 + PTX 9.0"
};

/// Whether a GPU of compute capability major.minor runs a build holding machine code for the
/// architectures `sass` and PTX for `ptx` (numbers as 86 for 8.6): machine code runs on its own
/// major version at the same or a later minor one, PTX on any capability from its own up.
bool gpu_has_kernels(int major, int minor, const std::vector<int>& sass, const std::vector<int>& ptx);

/// Asks the CUDA runtime (when built) for devices. Never throws: a machine without a driver
/// or GPU is a normal answer.
DeviceReport probe_devices();

}  // namespace revmerge
