# Every third-party dependency comes from Debian packages (tools/bootstrap.sh installs them), or
# from the same packages unpacked into a folder named by CMAKE_PREFIX_PATH (tools/vendor-debs.sh).
find_package(fmt REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(Threads REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(yaml-cpp REQUIRED)

# OpenBLAS (CBLAS + LAPACK) and the reference LAPACKE C interface on top of it. The OpenMP
# build of OpenBLAS is required: the CPU backend calls it from its own OpenMP threads, where
# that build runs single-threaded per call (the pthread build is not safe to call that way).
find_path(REVMERGE_CBLAS_INCLUDE_DIR cblas.h
  PATH_SUFFIXES openblas-openmp x86_64-linux-gnu/openblas-openmp NO_CMAKE_SYSTEM_PATH)
find_path(REVMERGE_CBLAS_INCLUDE_DIR cblas.h
  PATHS /usr/include/x86_64-linux-gnu/openblas-openmp /usr/include/openblas-openmp NO_DEFAULT_PATH)
find_library(REVMERGE_OPENBLAS_LIBRARY NAMES openblas
  PATH_SUFFIXES openblas-openmp x86_64-linux-gnu/openblas-openmp NO_CMAKE_SYSTEM_PATH)
find_library(REVMERGE_OPENBLAS_LIBRARY NAMES openblas
  PATHS /usr/lib/x86_64-linux-gnu/openblas-openmp NO_DEFAULT_PATH)
# RE2 for the patterns in adapter configs (linear-time matching of untrusted regexes).
find_path(REVMERGE_RE2_INCLUDE_DIR re2/re2.h)
find_library(REVMERGE_RE2_LIBRARY NAMES re2)
find_path(REVMERGE_LAPACKE_INCLUDE_DIR lapacke.h)
find_library(REVMERGE_LAPACKE_LIBRARY NAMES lapacke)
# Thrust for the CPU backend's element-wise kernels (OpenMP system): the CUDA toolkit's CCCL
# when present, Debian's libthrust-dev otherwise.
find_path(REVMERGE_THRUST_INCLUDE_DIR thrust/version.h
  HINTS /usr/local/cuda/include/cccl $ENV{CUDA_HOME}/include/cccl)
foreach(var REVMERGE_CBLAS_INCLUDE_DIR REVMERGE_OPENBLAS_LIBRARY REVMERGE_LAPACKE_INCLUDE_DIR
            REVMERGE_LAPACKE_LIBRARY REVMERGE_THRUST_INCLUDE_DIR REVMERGE_RE2_INCLUDE_DIR
            REVMERGE_RE2_LIBRARY)
  if(NOT ${var})
    message(FATAL_ERROR "revmerge: ${var} not found; run tools/bootstrap.sh "
                        "(Debian: libopenblas-openmp-dev liblapacke-dev libthrust-dev libre2-dev)")
  endif()
endforeach()
add_library(revmerge_blas INTERFACE)
target_include_directories(revmerge_blas SYSTEM INTERFACE
  ${REVMERGE_CBLAS_INCLUDE_DIR} ${REVMERGE_LAPACKE_INCLUDE_DIR})
target_link_libraries(revmerge_blas INTERFACE
  ${REVMERGE_LAPACKE_LIBRARY} ${REVMERGE_OPENBLAS_LIBRARY})

add_library(revmerge_re2 INTERFACE)
target_include_directories(revmerge_re2 SYSTEM INTERFACE ${REVMERGE_RE2_INCLUDE_DIR})
target_link_libraries(revmerge_re2 INTERFACE ${REVMERGE_RE2_LIBRARY} Threads::Threads)

if(REVMERGE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
