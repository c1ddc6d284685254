#pragma once
// A matrix written out transposed, tile by tile: element by element, one side of a transpose
// walks memory with a stride, touching a cache line per element; in 32 × 32 tiles both sides
// stay within a few kilobytes, so each line is read or written whole.
#include <algorithm>
#include <cstdint>

namespace revmerge {

/// The values as they are (converted only by the assignment).
struct AsIs {
  template <class T>
  T operator()(T v) const {
    return v;
  }
};

/// dst[c · dst_stride + r] = convert(src[r · src_stride + c]) for r < rows, c < cols.
template <class Dst, class Src, class Convert = AsIs>
void transpose_tiled(Dst* dst, std::int64_t dst_stride, const Src* src, std::int64_t src_stride, std::int64_t rows,
                     std::int64_t cols, Convert convert = {}) {
  constexpr std::int64_t kTile = 32;
  for (std::int64_t r0 = 0; r0 < rows; r0 += kTile)
    for (std::int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const std::int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
      for (std::int64_t c = c0; c < c1; ++c)
        for (std::int64_t r = r0; r < r1; ++r) dst[c * dst_stride + r] = convert(src[r * src_stride + c]);
    }
}

}  // namespace revmerge
