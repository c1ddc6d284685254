#pragma once
// Element-wise work of the batched PT-SVD shared by the CPU backend (Thrust's OpenMP system) and
// the CUDA backend: CholeskyQR2's verdict, and a truncated SVD's LoRA factors written into the
// RMM merge's stacks.
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

// Whether CholeskyQR2 held for matrix b of a batch (one index per matrix): both rounds'
// Cholesky factorizations succeeded (info words `infos[b]` and `infos[batch + b]`) and the second
// round's factor R₂ (n × n, column-major, upper triangle) is within `tolerance` of I everywhere
// (then the first round's Q was nearly orthonormal and the second's is to rounding). Where it
// did not, held[b] becomes 0; it is never set, so one flag gathers every step of a module. A
// NaN anywhere fails it.
struct CholeskyQrVerdict {
  const double* r2;
  const int* infos;
  std::int64_t n, batch;
  double tolerance;
  int* held;
  REVMERGE_HD void operator()(std::int64_t b) const {
    bool ok = infos[b] == 0 && infos[batch + b] == 0;
    const double* m = r2 + b * n * n;
    for (std::int64_t j = 0; j < n && ok; ++j)
      for (std::int64_t i = 0; i <= j && ok; ++i) {
        const double d = m[j * n + i] - (i == j ? 1.0 : 0.0);
        ok = d < tolerance && -d < tolerance;
      }
    if (!ok) held[b] = 0;
  }
};

}  // namespace revmerge::kernels
