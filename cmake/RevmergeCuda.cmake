# The one place that decides whether the CUDA backend is built. Never `native` architectures:
# build machines here have a toolkit but no GPU. By default machine code for the A100 (sm_80),
# A10 / A40 (sm_86), L4 / L40 (sm_89) and H100 / H200 (sm_90), and compute_90 PTX that newer
# GPUs compile when they load it ("90" is both); a GPU the build has no kernels for is never
# chosen by --device auto (host/core/devices.cpp).
set(REVMERGE_HAVE_CUDA OFF)
if(NOT REVMERGE_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80-real 86-real 89-real 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(REVMERGE_HAVE_CUDA ON)
  elseif(REVMERGE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "revmerge: REVMERGE_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
message(STATUS "revmerge: CUDA backend ${REVMERGE_HAVE_CUDA}")
