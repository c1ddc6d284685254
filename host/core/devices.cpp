// The one place that knows whether the CUDA backend was compiled in.
#include "revmerge/devices.hpp"

#ifdef REVMERGE_HAVE_CUDA
#include "cuda_probe.hpp"
#endif

namespace revmerge {

DeviceReport probe_devices() {
  DeviceReport r;
#ifdef REVMERGE_HAVE_CUDA
  r.cuda_built = true;
  r.gpus = cuda::list_gpus(r.why_no_gpu);
#else
  r.why_no_gpu = "this build has no CUDA backend (configured without a CUDA toolkit)";
#endif
  return r;
}

}  // namespace revmerge
