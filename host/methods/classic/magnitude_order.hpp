#pragma once
// A row's positions by descending magnitude, equal magnitudes by ascending position: the order
// std::stable_sort gives with |a| > |b|, from a stable least-significant-digit radix sort on the
// magnitudes' bits (for finite floats, ordered as their magnitudes). DELLA ranks every row of
// every task this way; a comparison sort of a 4096-long row was most of its time.
#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/elementwise_step.hpp"

namespace revmerge {

class MagnitudeOrder {
 public:
  /// order[p] = the position of the p-th largest magnitude among `value(0 … n-1)` (finite).
  template <class Value>
  void sort(std::int64_t n, const Value& value, std::span<std::int64_t> order) {
    const auto size = static_cast<std::size_t>(n);
    for (auto& v : keys_) v.resize(size);
    for (auto& v : positions_) v.resize(size);
    // Descending magnitude is ascending ~bits; the sort is stable, so ties stay by position.
    std::uint32_t all = ~0u, any = 0;
    for (std::size_t i = 0; i < size; ++i) {
      const auto key = ~kernels::magnitude_bits(value(static_cast<std::int64_t>(i)));
      keys_[0][i] = key;
      positions_[0][i] = static_cast<std::uint32_t>(i);
      all &= key;
      any |= key;
    }
    // A digit all keys share orders nothing: bf16 values' low 16 bits, the exponent's high bits
    // mostly. The others are counted in one pass, each in two halves (even and odd positions)
    // so that a run of equal digits is not one chain of increments of the same counter.
    int shifts[4], digits = 0;
    for (int shift = 0; shift < 32; shift += 8)
      if ((((all ^ any) >> shift) & 0xffu) != 0) shifts[digits++] = shift;
    std::uint32_t counts[4][2][256] = {};
    for (std::size_t i = 0; i < size; ++i)
      for (int k = 0; k < digits; ++k) ++counts[k][i & 1][(keys_[0][i] >> shifts[k]) & 0xffu];
    int from = 0;
    for (int k = 0; k < digits; ++k) {
      std::uint32_t start[256];
      std::uint32_t at = 0;
      for (int d = 0; d < 256; ++d) {
        start[d] = at;
        at += counts[k][0][d] + counts[k][1][d];
      }
      const int to = from ^ 1;
      for (std::size_t i = 0; i < size; ++i) {
        const auto slot = start[(keys_[from][i] >> shifts[k]) & 0xffu]++;
        keys_[to][slot] = keys_[from][i];
        positions_[to][slot] = positions_[from][i];
      }
      from = to;
    }
    for (std::size_t p = 0; p < size; ++p) order[p] = positions_[from][p];
  }

 private:
  std::array<std::vector<std::uint32_t>, 2> keys_, positions_;
};

}  // namespace revmerge
