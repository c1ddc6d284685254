#include <cuda_runtime.h>

#include "cuda_probe.hpp"

namespace revmerge::cuda {

std::vector<GpuInfo> list_gpus(std::string& why_none) noexcept {
  std::vector<GpuInfo> gpus;
  int count = 0;
  const cudaError_t st = cudaGetDeviceCount(&count);
  if (st != cudaSuccess) {
    why_none = std::string("CUDA runtime: ") + cudaGetErrorName(st) + ": " + cudaGetErrorString(st);
    return gpus;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    gpus.push_back({i, p.name, p.totalGlobalMem, p.major, p.minor});
  }
  if (gpus.empty()) why_none = "CUDA runtime reports no devices";
  return gpus;
}

}  // namespace revmerge::cuda
