#pragma once
// Synthetic base weights and full fine-tunes of them, the recipe of bench/compress_bench.py:
// W ~ 0.02 · N(0, 1); fine-tune t adds Δ_t = U diag(s) V over 96 directions with weights
// s_j = 10⁻³ · 0.9ʲ, plus 10⁻⁵ · N(0, 1) noise — a decaying spectrum, as trained deltas have.
// Draws are counter-based (seed, stream, element), so nothing depends on the thread count.
#include <cblas.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/counter_rng.hpp"

namespace revmerge::bench {

inline void fill_normal(std::vector<float>& v, std::uint64_t seed, std::uint64_t stream, float scale) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(v.size()); ++i)
    v[i] = scale * static_cast<float>(kernels::counter_normal(seed, stream, static_cast<std::uint64_t>(i)));
}

/// The base weight (rows × cols, row-major) of the tensor whose stream is `stream`.
inline void synthetic_base(std::vector<float>& w, std::int64_t rows, std::int64_t cols,
                           std::uint64_t seed, std::uint64_t stream) {
  w.resize(static_cast<std::size_t>(rows * cols));
  fill_normal(w, seed, stream, 0.02f);
}

/// Fine-tune `task` of base `w`: out = w + U diag(s) V + noise.
inline void synthetic_fine_tune(const std::vector<float>& w, std::vector<float>& out, std::int64_t rows,
                                std::int64_t cols, std::uint64_t seed, std::uint64_t stream,
                                std::int64_t task) {
  constexpr std::int64_t k = 96;
  const std::uint64_t task_seed = seed + 1000 + static_cast<std::uint64_t>(task);
  std::vector<float> u(static_cast<std::size_t>(rows * k)), v(static_cast<std::size_t>(k * cols));
  fill_normal(u, task_seed, stream, 1.0f);
  fill_normal(v, task_seed, stream + 1, 1.0f);
  for (std::int64_t j = 0; j < k; ++j) {
    const float s = 1e-3f * static_cast<float>(std::pow(0.9, double(j)));
    for (std::int64_t r = 0; r < rows; ++r) u[r * k + j] *= s;
  }
  out.resize(w.size());
  fill_normal(out, task_seed, stream + 2, 1e-5f);  // the noise; U diag(s) V and W go on top
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows),
              static_cast<int>(cols), static_cast<int>(k), 1.0f, u.data(), static_cast<int>(k),
              v.data(), static_cast<int>(cols), 1.0f, out.data(), static_cast<int>(cols));
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(w.size()); ++i) out[i] += w[i];
}

}  // namespace revmerge::bench
