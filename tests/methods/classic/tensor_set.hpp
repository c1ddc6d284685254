#pragma once
// A tensor of a base and three fine-tunes, and its merge by the CPU's piece driver: the
// reference of the full-model merge tests.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "methods/classic/piece_merge.hpp"
#include "revmerge/dtype.hpp"
#include "revmerge/safetensors.hpp"
#include "test_util.hpp"

namespace revmerge::test {

using i64 = std::int64_t;

// A base and `fine_tunes` fine-tunes (three unless asked) of one tensor, in one file of `dtype`.
// The changes are multiples of 1/64, so that magnitudes tie often (as bf16 checkpoints' do) and
// the trims' tie rule is exercised.
struct TensorSet {
  TempDir dir;
  std::vector<i64> shape;
  std::unique_ptr<SafetensorsFile> file;
  std::vector<CheckpointTensor> tensors;  // base, t0, t1, …

  // `edit` changes the values (base first) before they are written.
  explicit TensorSet(std::vector<i64> s, DType dtype = DType::F32, int fine_tunes = 3,
                     const std::function<void(std::vector<std::vector<float>>&)>& edit = {})
      : shape(std::move(s)) {
    i64 numel = 1;
    for (const auto d : shape) numel *= d;
    const auto inputs = static_cast<std::size_t>(fine_tunes + 1);
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<std::vector<float>> values(inputs, std::vector<float>(static_cast<std::size_t>(numel)));
    for (auto& v : values[0]) v = normal(rng);
    for (std::size_t t = 1; t < inputs; ++t)
      for (i64 j = 0; j < numel; ++j) values[t][j] = values[0][j] + std::round(normal(rng) * 8.0f) / 64.0f;
    if (edit) edit(values);
    std::vector<TensorData> data;
    std::vector<std::string> names{"base"};
    for (int t = 0; t < fine_tunes; ++t) names.push_back("t" + std::to_string(t));
    std::vector<std::vector<std::byte>> bytes(inputs);
    for (std::size_t t = 0; t < inputs; ++t) {
      bytes[t].resize(values[t].size() * dtype_size(dtype));
      convert_from_f32(values[t].data(), dtype, bytes[t].data(), values[t].size());
      data.push_back({{names[t], dtype, shape}, bytes[t]});
    }
    write_safetensors(dir / "set.safetensors", data);
    file = std::make_unique<SafetensorsFile>(dir / "set.safetensors");
    for (const auto& name : names) tensors.push_back({file.get(), &file->at(name)});
  }

  i64 numel() const {
    i64 n = 1;
    for (const auto d : shape) n *= d;
    return n;
  }

  // The merged tensor, in pieces of at most `max_elements` (rounded to the merger's rows).
  std::vector<float> merge(const ClassicMergeOptions& o, std::size_t n, bool base, i64 max_elements,
                           int threads) const {
    return merge(o, n, base, PiecePlan{max_elements, 0, 24}, threads);
  }
  /// The same under `plan`; each piece's size appended to `pieces` where given.
  std::vector<float> merge(const ClassicMergeOptions& o, std::size_t n, bool base, const PiecePlan& plan, int threads,
                           std::vector<std::size_t>* pieces = nullptr) const {
    TensorSources src;
    if (base) src = {&tensors[0], "the base", {}, {}};
    for (std::size_t t = 0; t < n; ++t) {
      src.models.push_back(&tensors[1 + t]);
      src.model_where.push_back("task " + std::to_string(t));
    }
    auto merger = piece_merger(o, "w", shape, n, base);
    std::vector<float> result(static_cast<std::size_t>(numel()), std::nanf(""));
    FloatBuffer out;
    std::vector<int> written(result.size(), 0);
    TensorInputs in;
    merge_in_pieces(*merger, "w", shape, src, plan, in, out,
                    [&](std::uint64_t first, std::span<const float> part) {
                      std::memcpy(result.data() + first, part.data(), part.size_bytes());
                      if (pieces) pieces->push_back(part.size());
                      for (std::size_t k = 0; k < part.size(); ++k) ++written[first + k];
                    },
                    threads);
    for (std::size_t k = 0; k < written.size(); ++k)
      if (written[k] != 1) ADD_FAILURE() << "element " << k << " written " << written[k] << " times";
    return result;
  }
};

// A merge the tests run: `method` on n tasks, with a base or not, its options set by `set`.
struct Case {
  const char* name;
  ClassicMethod method;
  std::size_t n;
  bool base;
  void (*set)(ClassicMergeOptions&);
};

inline void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

}  // namespace revmerge::test
