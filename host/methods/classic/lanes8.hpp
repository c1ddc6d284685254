#pragma once
// A statistics block's eight lanes as one vector (GCC's vector types), for the host's runs that
// take them eight elements at a time and still add each lane's elements in index order — the
// bits of kernels/elementwise.hpp's steps, whose indices are lanes.
#include <cstring>

#include "kernels/elementwise_step.hpp"

namespace revmerge {

using Lanes = double __attribute__((vector_size(kernels::kStatLanes * sizeof(double))));
using Floats = float __attribute__((vector_size(kernels::kStatLanes * sizeof(float))));

/// Eight floats from p, widened (into `out`: a vector return would change the ABI between the
/// instruction sets the callers are compiled for).
[[gnu::always_inline]] inline void widen8(Lanes& out, const float* p) {
  Floats f;
  std::memcpy(&f, p, sizeof f);
  out = __builtin_convertvector(f, Lanes);
}

/// Eight doubles rounded to floats at p.
[[gnu::always_inline]] inline void narrow8(float* p, const Lanes& v) {
  const Floats f = __builtin_convertvector(v, Floats);
  std::memcpy(p, &f, sizeof f);
}

}  // namespace revmerge
