#pragma once
// LAPACK status words turned into solver_error naming the call and the matrix size.
#include <cstdint>
#include <string>

#include "revmerge/error.hpp"

namespace revmerge {

inline void check_lapack(int info, const char* call, std::int64_t rows, std::int64_t cols) {
  if (info != 0)
    throw solver_error(std::string(call) + " failed on a " + std::to_string(rows) + " × " +
                       std::to_string(cols) + " matrix (info " + std::to_string(info) + ")");
}

}  // namespace revmerge
