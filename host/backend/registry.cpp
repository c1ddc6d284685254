#include "backend/registry.hpp"

#include "revmerge/devices.hpp"
#include "revmerge/error.hpp"

#ifdef REVMERGE_HAVE_CUDA
#include "cuda_backend.hpp"
#endif

namespace revmerge {

Device parse_device_option(std::string_view value, std::string_view option) {
  if (value == "cpu") return Device::cpu;
  if (value == "cuda" || value == "gpu") return Device::cuda;
  if (value == "auto") return Device::automatic;
  throw usage_error(std::string(option) + ": unknown device '" + std::string(value) +
                    "' (expected cpu, cuda or auto)");
}

std::string cuda_unavailable_reason(int gpu) {
  const auto report = probe_devices();
  if (!report.cuda_built || report.gpus.empty()) return report.why_no_gpu;
  if (gpu < 0 || gpu >= static_cast<int>(report.gpus.size()))
    return "GPU " + std::to_string(gpu) + " does not exist (" +
           std::to_string(report.gpus.size()) + " visible)";
  const auto& g = report.gpus[static_cast<std::size_t>(gpu)];
  if (!g.has_kernels)
    return "GPU " + std::to_string(gpu) + " (" + g.name + ", sm_" + std::to_string(g.compute_major) +
           std::to_string(g.compute_minor) + ") has no kernels in this build (built for " +
           report.kernels + "; rebuild with -DCMAKE_CUDA_ARCHITECTURES=" +
           std::to_string(g.compute_major) + std::to_string(g.compute_minor) + ")";
  return {};
}

std::unique_ptr<Backend> make_backend(Device choice, const BackendOptions& options) {
  if (choice == Device::cpu) return make_cpu_backend(options);
  const auto why = cuda_unavailable_reason(options.device);
  if (!why.empty()) {
    if (choice == Device::automatic) return make_cpu_backend(options);
    throw device_error("--device cuda: no usable GPU: " + why + "; use --device cpu");
  }
#ifdef REVMERGE_HAVE_CUDA
  return make_cuda_backend(options);
#else
  throw device_error("--device cuda: this build has no CUDA backend");
#endif
}

}  // namespace revmerge
