#pragma once
// Element-wise work of the batched PT-SVD shared by the CPU backend (Thrust's OpenMP system) and
// the CUDA backend: a truncated SVD's LoRA factors written into the RMM merge's stacks.
#include <cstdint>

#include "kernels/host_device.hpp"

namespace revmerge::kernels {

// Δ_t ≈ V S Uᵀ (U in × k, V out × k, column-major, task after task; S k values per task) as
// the factors `revmerge compress` writes (lora_factors in methods/lowrank/pt_svd.hpp runs these
// on the host): A_t = Uᵀ (r × in, row-major) and B_t = V S (out × r), rows of A and columns of B
// from k to r zero. One index per element of the A stack (tasks × r × in) ...
struct LoraStackA {
  const double* u;
  std::int64_t in, k, r;
  float* a;
  REVMERGE_HD void operator()(std::int64_t i) const {
    const std::int64_t per = r * in, t = i / per, c = i % per / in, x = i % in;
    a[i] = c < k ? static_cast<float>(u[(t * k + c) * in + x]) : 0.0f;
  }
};

// ... and of the B stack (tasks × out × r).
struct LoraStackB {
  const double* v;
  const double* s;
  std::int64_t out, k, r;
  float* b;
  REVMERGE_HD void operator()(std::int64_t i) const {
    const std::int64_t per = out * r, t = i / per, y = i % per / r, c = i % r;
    b[i] = c < k ? static_cast<float>(v[(t * k + c) * out + y] * s[t * k + c]) : 0.0f;
  }
};

}  // namespace revmerge::kernels
