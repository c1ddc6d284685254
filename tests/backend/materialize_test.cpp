// Each backend's materialisation (the CPU's tiles: blocks, RMM's sums and products, each in
// its own vectorised loops; the GPU's 32 × 32 tiles, lanes laid along the stored rows) against
// the element routine, kernels::MaterializeElements, bit for bit: every part kind at shapes that
// leave partial tiles and blocks, with and without padding, a long stride, a divisor (B with the
// scale taken out), sources off their type's alignment, from every stored type into every
// output type, several parts in one call.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/backend_cases.hpp"
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
  bool misaligned = false;  // the sources one byte past an element boundary (the unaligned loads)
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
  out.push_back({"rmm A, P 4, sources off their alignment", out[out.size() - 1].part, out[out.size() - 1].sizes, true});
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

// The sources, the parts and the outputs live where the backend reads them (uploaded); each
// call holds every case, the parts' outputs end to end in one buffer, so a tile that strays
// into the next part, or a part found wrong, shows.
void expect_element_routine_bits(Backend& be, ElemType in, ElemType out_type, float divisor, std::mt19937& rng) {
  auto all = cases();  // three times over: enough parts for the GPU's search to take two rounds
  for (const auto& once = cases(); const auto& c : once) all.push_back(c);
  for (const auto& once = cases(); const auto& c : once) all.push_back(c);
  std::vector<DeviceBuffer> held;
  std::vector<std::vector<unsigned char>> sources;  // each part's, on the host, in turn
  std::vector<MaterializePart> parts;
  std::vector<std::size_t> at{0};  // each part's output offset in bytes
  for (auto& c : all) {
    auto& part = c.part;
    for (std::size_t s = 0; s < c.sizes.size(); ++s) {
      sources.push_back(stored(in, c.sizes[s], rng));
      const std::size_t off = c.misaligned ? 1 : 0;
      held.push_back(be.allocate(sources.back().size() + off));
      auto* at_byte = static_cast<unsigned char*>(held.back().data()) + off;
      be.upload(at_byte, sources.back().data(), sources.back().size(), {});
      part.src[s] = at_byte, part.src_type[s] = in;
    }
    part.out_type = out_type, part.divisor = divisor;
    parts.push_back(part);
    at.push_back(at.back() + static_cast<std::size_t>(part.rows * part.cols * kernels::elem_size(out_type)));
  }
  const std::vector<unsigned char> unwritten(at.back(), 0xAB);
  const auto out = test::to_device(be, unwritten);
  for (std::size_t k = 0; k < parts.size(); ++k) parts[k].out = static_cast<unsigned char*>(out.data()) + at[k];
  std::vector<MaterializePart> numbered = parts;
  auto args = number_parts(numbered, nullptr);
  const auto table = test::to_device(be, numbered);
  args.parts = static_cast<const MaterializePart*>(table.data());
  be.materialize(args, {});
  const auto got = test::to_host<unsigned char>(be, out, at.back());
  // The element routine on the host, over the host's copies of the same sources.
  std::vector<unsigned char> want(at.back(), 0xCD);
  std::size_t next_source = 0;
  for (std::size_t k = 0; k < parts.size(); ++k) {
    for (std::size_t s = 0; s < all[k].sizes.size(); ++s) numbered[k].src[s] = sources[next_source++].data();
    numbered[k].out = want.data() + at[k];
  }
  const auto host_args = number_parts(numbered, numbered.data());
  const kernels::MaterializeElements element{host_args};
  for (i64 e = 0; e < host_args.elements; ++e) element(e);
  for (std::size_t k = 0; k < parts.size(); ++k) {
    std::size_t first = at[k];
    while (first < at[k + 1] && got[first] == want[first]) ++first;
    ASSERT_EQ(first, at[k + 1]) << all[k].name << ": the first byte that differs, stored type " << int(in)
                                << ", output type " << int(out_type) << ", divisor " << divisor;
  }
}

class MaterializeOn : public ::testing::TestWithParam<std::string> {};

TEST_P(MaterializeOn, TilesAreTheElementRoutineBitForBit) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  std::mt19937 rng(11);
  for (const ElemType in : {ElemType::f32, ElemType::bf16, ElemType::f16, ElemType::f64})
    for (const ElemType out_type : {ElemType::f32, ElemType::bf16, ElemType::f16})
      for (const float divisor : {1.0f, 0.75f, -1.5f})  // a negative scale: the padding is -0
        expect_element_routine_bits(*be, in, out_type, divisor, rng);
}

// The device's blocks taking several tiles in turn (REVMERGE_MATERIALIZE_TILES_PER_BLOCK, set
// here for the call as the bench sets it): blocks that start inside a part, cross into the next
// and end in a third give the same bits. Calls of this test's size choose one tile a block.
TEST_P(MaterializeOn, BlocksTakingSeveralTilesGiveTheSameBits) {
  REVMERGE_BACKEND_OR_SKIP(be, GetParam());
  if (GetParam() != "cuda") GTEST_SKIP() << "only the GPU cuts a call into blocks of tiles";
  struct Unset {
    ~Unset() { unsetenv("REVMERGE_MATERIALIZE_TILES_PER_BLOCK"); }
  } unset;
  std::mt19937 rng(12);
  for (const char* per_block : {"1", "3", "16", "1024"}) {
    setenv("REVMERGE_MATERIALIZE_TILES_PER_BLOCK", per_block, 1);
    SCOPED_TRACE(std::string("tiles per block ") + per_block);
    expect_element_routine_bits(*be, ElemType::bf16, ElemType::bf16, 0.75f, rng);
    expect_element_routine_bits(*be, ElemType::f32, ElemType::f16, 1.0f, rng);
  }
  setenv("REVMERGE_MATERIALIZE_TILES_PER_BLOCK", "0", 1);
  EXPECT_THROW(expect_element_routine_bits(*be, ElemType::f32, ElemType::f32, 1.0f, rng), std::invalid_argument);
}

// A block's tiles in turn find their parts by walking on from the first one's (the device's
// kernel): every tile of a call, in blocks of any count, lands in the part a search finds, and
// inside it — parts with no tiles (an empty output) passed over.
TEST(MaterializeTiles, AWalkFromABlocksFirstTileFindsEveryTilesPart) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> size(0, 5);
  std::vector<MaterializePart> parts(40);
  for (auto& p : parts) {
    p.rows = size(rng) == 0 ? 0 : 1 + 20 * size(rng);  // some parts empty
    p.cols = 1 + 37 * size(rng);
  }
  const auto args = number_parts(parts, parts.data());
  ASSERT_GT(args.tiles, 100);
  for (const i64 per_block : {1, 2, 3, 7, 16, 1000}) {
    for (i64 begin = 0; begin < args.tiles; begin += per_block) {
      i64 part = kernels::materialize_part_of_tile(args, begin);
      for (i64 tile = begin; tile < std::min(args.tiles, begin + per_block); ++tile) {
        part = kernels::materialize_part_from(args, part, tile);
        i64 want = 0;  // the last part whose first tile is at most `tile`
        for (i64 k = 0; k < args.count; ++k)
          if (parts[k].first_tile <= tile) want = k;
        ASSERT_EQ(part, want) << "tile " << tile << ", " << per_block << " a block";
        ASSERT_GE(tile, parts[part].first_tile);
        ASSERT_LT(tile, parts[part].first_tile + kernels::materialize_tiles(parts[part]));
      }
    }
  }
}

TEST(MaterializeTiles, BlocksTakeSeveralTilesOnlyWhereEightWavesRemain) {
  EXPECT_EQ(kernels::materialize_tiles_per_block(688, 660), 1);  // one 7b MLP module's B
  EXPECT_EQ(kernels::materialize_tiles_per_block(156160, 660), 16);  // a whole 7b task
  EXPECT_EQ(kernels::materialize_tiles_per_block(39040, 660), 7);  // eight of its layers
  EXPECT_EQ(kernels::materialize_tiles_per_block(0, 0), 1);
}

INSTANTIATE_TEST_SUITE_P(Devices, MaterializeOn, ::testing::ValuesIn(test::all_backend_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace revmerge
