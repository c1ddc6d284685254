# Every third-party dependency comes from Debian packages (tools/bootstrap.sh installs them), or
# from the same packages unpacked into a folder named by CMAKE_PREFIX_PATH (tools/vendor-debs.sh).
find_package(fmt REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(Threads REQUIRED)

# OpenBLAS (CBLAS + LAPACK) and the reference LAPACKE C interface on top of it.
find_path(REVMERGE_CBLAS_INCLUDE_DIR cblas.h
  PATH_SUFFIXES openblas-pthread x86_64-linux-gnu/openblas-pthread openblas)
find_library(REVMERGE_OPENBLAS_LIBRARY NAMES openblas
  PATH_SUFFIXES openblas-pthread x86_64-linux-gnu/openblas-pthread)
find_path(REVMERGE_LAPACKE_INCLUDE_DIR lapacke.h)
find_library(REVMERGE_LAPACKE_LIBRARY NAMES lapacke)
foreach(var REVMERGE_CBLAS_INCLUDE_DIR REVMERGE_OPENBLAS_LIBRARY REVMERGE_LAPACKE_INCLUDE_DIR
            REVMERGE_LAPACKE_LIBRARY)
  if(NOT ${var})
    message(FATAL_ERROR "revmerge: ${var} not found; run tools/bootstrap.sh "
                        "(Debian: libopenblas-dev liblapacke-dev)")
  endif()
endforeach()
add_library(revmerge_blas INTERFACE)
target_include_directories(revmerge_blas SYSTEM INTERFACE
  ${REVMERGE_CBLAS_INCLUDE_DIR} ${REVMERGE_LAPACKE_INCLUDE_DIR})
target_link_libraries(revmerge_blas INTERFACE
  ${REVMERGE_LAPACKE_LIBRARY} ${REVMERGE_OPENBLAS_LIBRARY})

if(REVMERGE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
