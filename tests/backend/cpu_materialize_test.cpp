// The CPU backend's materialisation (its tiles: blocks, RMM's sums and products, each in its own
// vectorised loops) against the element routine the GPU runs, kernels::MaterializeElements, bit
// for bit: every part kind at shapes that leave partial tiles and blocks, with and without
// padding, a long stride, a divisor (B with the scale taken out), from every stored type into
// every output type.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/registry.hpp"
#include "kernels/materialize.hpp"
#include "methods/materialize_parts.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;
using kernels::ElemType;
using kernels::MaterializePart;
using kernels::PartKind;

// `count` random values stored as `t` (rounded where the type is 16-bit).
std::vector<unsigned char> stored(ElemType t, i64 count, std::mt19937& rng) {
  std::normal_distribution<float> g;
  std::vector<unsigned char> bytes(static_cast<std::size_t>(count) * static_cast<std::size_t>(kernels::elem_size(t)));
  for (i64 i = 0; i < count; ++i) {
    const float v = g(rng);
    if (t == ElemType::f64) {
      const double d = v;
      std::memcpy(bytes.data() + i * 8, &d, 8);
    } else {
      kernels::store_rounded(bytes.data(), i, t, v);
    }
  }
  return bytes;
}

struct Case {
  std::string name;
  MaterializePart part;
  std::vector<i64> sizes;  // the sources' element counts
};

std::vector<Case> cases() {
  std::vector<Case> out;
  MaterializePart p;
  // A rank bundle's A: rows of a stacked matrix, zero rows past the task's rank.
  p.kind = PartKind::block, p.rows = 40, p.cols = 300, p.row0 = 5, p.ld = 300, p.valid_rows = 29, p.valid_cols = 300;
  out.push_back({"block rows", p, {60 * 300}});
  // A rank bundle's B: the task's columns of out × Σk (a short segment at a long stride), zero
  // columns past its rank; enough rows for the prefetch to run ahead.
  p = {};
  p.kind = PartKind::block, p.rows = 700, p.cols = 40, p.col0 = 70, p.ld = 352, p.valid_rows = 700, p.valid_cols = 37;
  out.push_back({"block columns", p, {700 * 352}});
  // RMM's sums, B (positions are rows) and A (transposed), at P the CPU's loops fix at compile
  // time (1, 2, 4) and one they do not (3).
  for (const i64 basis : {1, 2, 3, 4}) {
    p = {};
    p.kind = PartKind::position_sum, p.r = 20, p.p = basis, p.n = 5, p.task = 2, p.rows = 301, p.cols = 20;
    const std::vector<i64> sizes = {301 * 20, 301 * 20 * basis, 301 * basis * 5};
    out.push_back({"rmm B, P " + std::to_string(basis), p, sizes});
    p.transposed = true, p.rows = 20, p.cols = 301;
    out.push_back({"rmm A, P " + std::to_string(basis), p, sizes});
  }
  // Products (the shared bases): A' = cores rows · Vᵀ and B' = U · cores columns, sizes that
  // leave partial blocks of rows and columns, and zero padding.
  p = {};
  p.kind = PartKind::product, p.rows = 45, p.cols = 200, p.row0 = 3, p.ld0 = 37, p.ld = 200, p.inner = 37;
  p.valid_rows = 42, p.valid_cols = 200;
  out.push_back({"product A", p, {50 * 37, 37 * 200}});
  p = {};
  p.kind = PartKind::product, p.rows = 301, p.cols = 70, p.ld0 = 29, p.ld = 150, p.col0 = 11, p.inner = 29;
  p.valid_rows = 301, p.valid_cols = 67;
  out.push_back({"product B", p, {301 * 29, 29 * 150}});
  return out;
}

TEST(CpuMaterialize, TilesAreTheElementRoutineBitForBit) {
  const auto be = make_backend(Device::cpu, {2, 0});
  std::mt19937 rng(11);
  for (const ElemType in : {ElemType::f32, ElemType::bf16, ElemType::f16, ElemType::f64})
    for (const ElemType out_type : {ElemType::f32, ElemType::bf16, ElemType::f16})
      for (const float divisor : {1.0f, 0.75f, -1.5f})  // a negative scale: the padding is -0
        for (auto c : cases()) {
          std::vector<std::vector<unsigned char>> sources;
          for (const i64 size : c.sizes) sources.push_back(stored(in, size, rng));
          auto& part = c.part;
          for (std::size_t s = 0; s < sources.size(); ++s) part.src[s] = sources[s].data(), part.src_type[s] = in;
          part.out_type = out_type, part.divisor = divisor;
          const std::size_t bytes = static_cast<std::size_t>(part.rows * part.cols) * static_cast<std::size_t>(kernels::elem_size(out_type));
          std::vector<unsigned char> got(bytes, 0xAB), want(bytes, 0xCD);
          part.out = got.data();
          std::vector<MaterializePart> parts{part};
          be->materialize(number_parts(parts, parts.data()), {});
          be->synchronize({});
          part.out = want.data();
          parts = {part};
          const auto args = number_parts(parts, parts.data());
          const kernels::MaterializeElements element{args};
          for (i64 e = 0; e < args.elements; ++e) element(e);
          std::size_t first = 0;
          while (first < bytes && got[first] == want[first]) ++first;
          ASSERT_EQ(first, bytes) << c.name << ": the first byte that differs, stored type " << int(in)
                                  << ", output type " << int(out_type) << ", divisor " << divisor;
        }
}

}  // namespace
}  // namespace revmerge
