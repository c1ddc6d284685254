#pragma once
// Status checks for every CUDA runtime, cuBLAS and cuSOLVER call: a failure throws
// device_error naming the call, its status and the source line. Each macro is triggered by a
// test (tests/cuda/cuda_check_test.cu).
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <string>

#include "revmerge/error.hpp"

namespace revmerge::cuda {

inline const char* cublas_status_name(cublasStatus_t s) noexcept { return cublasGetStatusName(s); }

inline const char* cusolver_status_name(cusolverStatus_t s) noexcept {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "CUSOLVER_STATUS_(other)";
  }
}

[[noreturn]] inline void fail_call(const char* call, const std::string& status, const char* file,
                                   int line) {
  throw device_error(std::string(call) + " failed: " + status + " (" + file + ":" +
                     std::to_string(line) + ")");
}

}  // namespace revmerge::cuda

#define REVMERGE_CUDA_CHECK(call)                                                             \
  do {                                                                                        \
    const cudaError_t revmerge_st_ = (call);                                                  \
    if (revmerge_st_ != cudaSuccess)                                                          \
      ::revmerge::cuda::fail_call(#call,                                                      \
                                  std::string(cudaGetErrorName(revmerge_st_)) + ": " +        \
                                      cudaGetErrorString(revmerge_st_),                       \
                                  __FILE__, __LINE__);                                        \
  } while (0)

#define REVMERGE_CUBLAS_CHECK(call)                                                           \
  do {                                                                                        \
    const cublasStatus_t revmerge_st_ = (call);                                               \
    if (revmerge_st_ != CUBLAS_STATUS_SUCCESS)                                                \
      ::revmerge::cuda::fail_call(#call, ::revmerge::cuda::cublas_status_name(revmerge_st_),  \
                                  __FILE__, __LINE__);                                        \
  } while (0)

#define REVMERGE_CUSOLVER_CHECK(call)                                                         \
  do {                                                                                        \
    const cusolverStatus_t revmerge_st_ = (call);                                             \
    if (revmerge_st_ != CUSOLVER_STATUS_SUCCESS)                                              \
      ::revmerge::cuda::fail_call(#call, ::revmerge::cuda::cusolver_status_name(revmerge_st_),\
                                  __FILE__, __LINE__);                                        \
  } while (0)
