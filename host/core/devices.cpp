// The one place that knows whether the CUDA backend was compiled in.
#include "revmerge/devices.hpp"

#ifdef REVMERGE_HAVE_CUDA
#include "cuda_probe.hpp"
#endif

namespace revmerge {

bool gpu_has_kernels(int major, int minor, const std::vector<int>& sass, const std::vector<int>& ptx) {
  const int cc = major * 10 + minor;
  for (const int s : sass)
    if (s / 10 == major && s % 10 <= minor) return true;
  for (const int p : ptx)
    if (cc >= p) return true;
  return false;
}

DeviceReport probe_devices() {
  DeviceReport r;
#ifdef REVMERGE_HAVE_CUDA
  r.cuda_built = true;
  r.gpus = cuda::list_gpus(r.why_no_gpu);
  r.kernels = cuda::build_kernels();
#else
  r.why_no_gpu = "this build has no CUDA backend (configured without a CUDA toolkit)";
#endif
  return r;
}

}  // namespace revmerge
