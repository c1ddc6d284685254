#pragma once
// Writes small adapter folders in PEFT's layout (config + safetensors) with chosen ranks and
// scale options, for merge tests that need variations real fixtures do not have.
#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "revmerge/peft.hpp"
#include "test_util.hpp"

namespace revmerge::test {

struct ModuleSpec {
  std::string path;
  std::int64_t rank, in, out;
};

struct WrittenAdapter {
  std::filesystem::path dir;
  std::map<std::string, std::vector<float>> a, b;  // unscaled, as stored
  std::map<std::string, double> scale;             // what PEFT would apply, computed here
};

/// `config_extra` is spliced into adapter_config.json (e.g. "\"use_rslora\": true").
inline WrittenAdapter write_adapter(const std::filesystem::path& dir, int r, double alpha,
                                    const std::vector<ModuleSpec>& modules,
                                    const std::string& config_extra, unsigned seed,
                                    float poison = 0.0f) {
  std::filesystem::create_directories(dir);
  WrittenAdapter w{dir, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  std::vector<TensorData> tensors;
  std::vector<std::vector<float>> keep;
  keep.reserve(2 * modules.size());
  for (const auto& m : modules) {
    auto& a = keep.emplace_back(m.rank * m.in);
    for (auto& x : a) x = g(rng);
    auto& b = keep.emplace_back(m.out * m.rank);
    for (auto& x : b) x = 0.5f * g(rng);
    w.a[m.path] = a;
    w.b[m.path] = b;
    tensors.push_back({{"base_model.model." + m.path + ".lora_A.weight", DType::F32, {m.rank, m.in}},
                       std::as_bytes(std::span(a))});
    tensors.push_back({{"base_model.model." + m.path + ".lora_B.weight", DType::F32, {m.out, m.rank}},
                       std::as_bytes(std::span(b))});
  }
  if (poison != 0.0f) keep[0][1] = poison;
  write_safetensors(dir / kAdapterWeightsName, tensors);
  std::string cfg = "{\"peft_type\": \"LORA\", \"r\": " + std::to_string(r) +
                    ", \"lora_alpha\": " + std::to_string(alpha) +
                    ", \"target_modules\": [\"q_proj\", \"v_proj\"]";
  if (!config_extra.empty()) cfg += ", " + config_extra;
  write_bytes(dir / kAdapterConfigName, cfg + "}");
  const PeftAdapter check(dir);  // scales as revmerge reads them, cross-checked by the tests
  for (const auto& m : check.modules()) w.scale[m.path] = m.scale;
  return w;
}

/// An adapter folder holding the given factors (A rank × in, B out × rank per module path),
/// lora_alpha = r so that every scale is 1.
inline void write_adapter_factors(const std::filesystem::path& dir, int r,
                                  const std::vector<ModuleSpec>& modules,
                                  const std::map<std::string, std::vector<float>>& a,
                                  const std::map<std::string, std::vector<float>>& b) {
  std::filesystem::create_directories(dir);
  std::vector<TensorData> tensors;
  for (const auto& m : modules) {
    tensors.push_back({{"base_model.model." + m.path + ".lora_A.weight", DType::F32, {m.rank, m.in}},
                       std::as_bytes(std::span(a.at(m.path)))});
    tensors.push_back({{"base_model.model." + m.path + ".lora_B.weight", DType::F32, {m.out, m.rank}},
                       std::as_bytes(std::span(b.at(m.path)))});
  }
  write_safetensors(dir / kAdapterWeightsName, tensors);
  write_bytes(dir / kAdapterConfigName,
              "{\"peft_type\": \"LORA\", \"r\": " + std::to_string(r) + ", \"lora_alpha\": " +
                  std::to_string(r) + ", \"target_modules\": [\"q_proj\", \"v_proj\"]}");
}

/// ΔW = s · B A in double.
inline std::vector<double> dense_delta(const std::vector<float>& a, const std::vector<float>& b,
                                       std::int64_t r, std::int64_t in, std::int64_t out, double s) {
  std::vector<double> d(out * in, 0.0);
  for (std::int64_t o = 0; o < out; ++o)
    for (std::int64_t j = 0; j < in; ++j) {
      double v = 0;
      for (std::int64_t k = 0; k < r; ++k) v += double(b[o * r + k]) * a[k * in + j];
      d[o * in + j] = s * v;
    }
  return d;
}

inline double relative_difference(const std::vector<double>& x, const std::vector<double>& y) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < x.size(); ++i) num += (x[i] - y[i]) * (x[i] - y[i]), den += y[i] * y[i];
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace revmerge::test
