#include <cuda_runtime.h>

#include <sstream>

#include "cuda_probe.hpp"

namespace revmerge::cuda {
namespace {

std::vector<int> numbers(const char* list) {
  std::vector<int> v;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) v.push_back(std::stoi(item));
  return v;
}

}  // namespace

std::string build_kernels() {
  std::string s;
  for (const int a : numbers(REVMERGE_CUDA_SASS)) s += (s.empty() ? "sm_" : ", sm_") + std::to_string(a);
  for (const int a : numbers(REVMERGE_CUDA_PTX))
    s += " + PTX " + std::to_string(a / 10) + "." + std::to_string(a % 10);
  return s;
}

std::vector<GpuInfo> list_gpus(std::string& why_none) noexcept {
  std::vector<GpuInfo> gpus;
  int count = 0;
  const cudaError_t st = cudaGetDeviceCount(&count);
  if (st != cudaSuccess) {
    const std::string runtime = std::string("CUDA runtime: ") + cudaGetErrorName(st) + ": " +
                                cudaGetErrorString(st);
    why_none = st == cudaErrorInsufficientDriver || st == cudaErrorNoDevice
                   ? "no NVIDIA driver or GPU found (" + runtime + ")"
                   : runtime;
    return gpus;
  }
  const auto sass = numbers(REVMERGE_CUDA_SASS), ptx = numbers(REVMERGE_CUDA_PTX);
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    gpus.push_back({i, p.name, p.totalGlobalMem, p.major, p.minor,
                    gpu_has_kernels(p.major, p.minor, sass, ptx)});
  }
  if (gpus.empty()) why_none = "no NVIDIA driver or GPU found (the CUDA runtime reports no devices)";
  return gpus;
}

}  // namespace revmerge::cuda
