// Each status-check macro of the CUDA backend is triggered and turns into a device_error that
// names the call. Runs with or without a GPU: without one, creating a handle already fails.
#include <gtest/gtest.h>

#include <string>

#include "cuda_check.hpp"

namespace revmerge {
namespace {

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const device_error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaCheck, RuntimeFailureNamesTheCall) {
  const auto msg = error_of([] { REVMERGE_CUDA_CHECK(cudaSetDevice(-1)); });
  EXPECT_NE(msg.find("cudaSetDevice(-1) failed: cudaError"), std::string::npos) << msg;
}

TEST(CudaCheck, CublasFailureNamesTheCall) {
  cublasHandle_t h = nullptr;
  std::string msg = error_of([&] { REVMERGE_CUBLAS_CHECK(cublasCreate(&h)); });
  if (msg.empty()) {  // a GPU is present: provoke an invalid-value error instead
    float x = 0;
    msg = error_of([&] {
      REVMERGE_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, -1, 1, 1, &x, nullptr, 1,
                                        nullptr, 1, &x, nullptr, 1));
    });
    cublasDestroy(h);
  }
  EXPECT_NE(msg.find("failed: CUBLAS_STATUS_"), std::string::npos) << msg;
}

TEST(CudaCheck, CusolverFailureNamesTheCall) {
  cusolverDnHandle_t h = nullptr;
  std::string msg = error_of([&] { REVMERGE_CUSOLVER_CHECK(cusolverDnCreate(&h)); });
  if (msg.empty()) {
    int lwork = 0;
    syevjInfo_t params = nullptr;
    cusolverDnCreateSyevjInfo(&params);
    msg = error_of([&] {
      REVMERGE_CUSOLVER_CHECK(cusolverDnSsyevjBatched_bufferSize(
          h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, -1, nullptr, 1, nullptr, &lwork,
          params, 1));
    });
    cusolverDnDestroySyevjInfo(params);
    cusolverDnDestroy(h);
  }
  EXPECT_NE(msg.find("failed: CUSOLVER_STATUS_"), std::string::npos) << msg;
}

}  // namespace
}  // namespace revmerge
