// Which GPUs a build can run on: machine code for its own major version at the same or a later
// minor one, PTX for any capability from its own up — so `--device auto` never picks a GPU the
// build has no kernels for.
#include "revmerge/devices.hpp"

#include <gtest/gtest.h>

#include "backend/registry.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

TEST(Devices, AGpuRunsABuildWithItsMachineCodeOrOlderPtx) {
  const std::vector<int> sass = {80, 86, 89, 90}, ptx = {90};
  EXPECT_TRUE(gpu_has_kernels(8, 0, sass, ptx));   // A100
  EXPECT_TRUE(gpu_has_kernels(8, 7, sass, ptx));   // Orin: sm_86 code runs on 8.7
  EXPECT_TRUE(gpu_has_kernels(9, 0, sass, ptx));   // H100 / H200
  EXPECT_TRUE(gpu_has_kernels(10, 0, sass, ptx));  // B200: compute_90 PTX, compiled on load
  EXPECT_TRUE(gpu_has_kernels(12, 0, sass, ptx));
  EXPECT_FALSE(gpu_has_kernels(7, 5, sass, ptx));  // T4: nothing for Turing
  // A build for sm_90 alone, without PTX, runs on Hopper only.
  EXPECT_TRUE(gpu_has_kernels(9, 0, {90}, {}));
  EXPECT_FALSE(gpu_has_kernels(10, 0, {90}, {}));
  EXPECT_FALSE(gpu_has_kernels(8, 6, {90}, {90}));
}

TEST(Devices, AMissingGpuIsToldWithTheWayOut) {
  if (!probe_devices().gpus.empty()) GTEST_SKIP() << "a GPU is here";
  EXPECT_FALSE(cuda_unavailable_reason().empty());
  try {
    make_backend(Device::cuda, {});
    FAIL() << "a CUDA backend without a GPU";
  } catch (const device_error& e) {
    EXPECT_NE(std::string(e.what()).find("use --device cpu"), std::string::npos) << e.what();
  }
  EXPECT_EQ(make_backend(Device::automatic, {})->kind(), BackendKind::cpu);
}

}  // namespace
}  // namespace revmerge
