#pragma once
// Fixtures of the low-rank tests: matrices with a known spectrum (so the best rank-k error is
// known without an SVD), the error of a truncated SVD, and tiny Hugging Face model folders.
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "methods/lowrank/randomized_svd.hpp"
#include "revmerge/dtype.hpp"
#include "revmerge/safetensors.hpp"
#include "test_util.hpp"

namespace revmerge::test {

using i64 = std::int64_t;

// Orthonormal columns (m × k, column-major) by modified Gram–Schmidt on Gaussian columns.
inline std::vector<double> orthonormal(i64 m, i64 k, std::mt19937_64& rng) {
  std::normal_distribution<double> g;
  std::vector<double> q(static_cast<std::size_t>(m * k));
  for (auto& x : q) x = g(rng);
  for (i64 c = 0; c < k; ++c) {
    for (i64 p = 0; p < c; ++p) {
      double d = 0;
      for (i64 i = 0; i < m; ++i) d += q[p * m + i] * q[c * m + i];
      for (i64 i = 0; i < m; ++i) q[c * m + i] -= d * q[p * m + i];
    }
    double n = 0;
    for (i64 i = 0; i < m; ++i) n += q[c * m + i] * q[c * m + i];
    for (i64 i = 0; i < m; ++i) q[c * m + i] /= std::sqrt(n);
  }
  return q;
}

// A = U diag(sigma) Vᵀ, column-major m × n.
inline std::vector<double> with_spectrum(i64 m, i64 n, const std::vector<double>& sigma,
                                         unsigned seed) {
  std::mt19937_64 rng(seed);
  const i64 r = static_cast<i64>(sigma.size());
  const auto u = orthonormal(m, r, rng), v = orthonormal(n, r, rng);
  std::vector<double> a(static_cast<std::size_t>(m * n), 0.0);
  for (i64 c = 0; c < r; ++c)
    for (i64 j = 0; j < n; ++j)
      for (i64 i = 0; i < m; ++i) a[j * m + i] += u[c * m + i] * sigma[c] * v[c * n + j];
  return a;
}

inline double error_sq(const std::vector<double>& a, const TruncatedSvd& s, i64 m, i64 n) {
  double e = 0;
  for (i64 j = 0; j < n; ++j)
    for (i64 i = 0; i < m; ++i) {
      double v = a[j * m + i];
      for (i64 c = 0; c < s.k; ++c) v -= s.u[c * m + i] * s.s[c] * s.v[c * n + j];
      e += v * v;
    }
  return e;
}

inline double tail(const std::vector<double>& sigma, i64 k) {
  double t = 0;
  for (std::size_t j = static_cast<std::size_t>(k); j < sigma.size(); ++j) t += sigma[j] * sigma[j];
  return t;
}

// How a tiny model's folder holds its weights: as nn.Linear does (out × in, a llama), or as
// transformers' Conv1D does (in × out, GPT-2: its adapters say fan_in_fan_out).
enum class Layout { linear, conv1d };

// Block l's one linear weight in a tiny model of `layout`.
inline std::string weight_name(int l, Layout layout = Layout::linear) {
  return layout == Layout::conv1d ? "transformer.h." + std::to_string(l) + ".attn.c_attn.weight"
                                  : "model.layers." + std::to_string(l) + ".self_attn.q_proj.weight";
}

// A tiny Hugging Face folder with one linear module in each of w.size() blocks, w[l] given
// row-major out × in and written as `layout` holds it.
inline void write_model(const std::filesystem::path& dir,
                        const std::vector<std::vector<float>>& w, i64 out, i64 in, DType dtype,
                        Layout layout = Layout::linear) {
  const bool conv1d = layout == Layout::conv1d;
  std::filesystem::create_directories(dir);
  write_bytes(dir / "config.json", conv1d ? "{\"model_type\": \"gpt2\"}" : "{\"model_type\": \"llama\"}");
  std::vector<std::vector<std::byte>> bytes;
  std::vector<TensorData> tensors;
  for (std::size_t l = 0; l < w.size(); ++l) {
    std::vector<float> stored = w[l];
    if (conv1d)
      for (i64 o = 0; o < out; ++o)
        for (i64 i = 0; i < in; ++i) stored[i * out + o] = w[l][o * in + i];
    auto& b = bytes.emplace_back(stored.size() * dtype_size(dtype));
    convert_from_f32(stored.data(), dtype, b.data(), stored.size());
    tensors.push_back({{weight_name(int(l), layout), dtype, conv1d ? std::vector<i64>{in, out} : std::vector<i64>{out, in}}, b});
  }
  write_safetensors(dir / "model.safetensors", tensors);
}

}  // namespace revmerge::test
