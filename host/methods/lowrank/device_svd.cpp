#include "methods/lowrank/device_svd.hpp"

#ifdef REVMERGE_HAVE_CUDA
#include "cuda_backend.hpp"
#endif

namespace revmerge {

std::unique_ptr<DeviceDeltaSvd> make_device_delta_svd(Backend& backend) {
  if (backend.kind() != BackendKind::cuda) return nullptr;
#ifdef REVMERGE_HAVE_CUDA
  return make_cuda_delta_svd(backend);
#else
  return nullptr;
#endif
}

}  // namespace revmerge
