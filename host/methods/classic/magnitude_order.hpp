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
    for (std::size_t i = 0; i < size; ++i) {
      keys_[0][i] = ~kernels::magnitude_bits(value(static_cast<std::int64_t>(i)));
      positions_[0][i] = static_cast<std::uint32_t>(i);
    }
    int from = 0;
    for (int shift = 0; shift < 32; shift += 8) {
      std::array<std::uint32_t, 257> start{};
      for (std::size_t i = 0; i < size; ++i) ++start[((keys_[from][i] >> shift) & 0xffu) + 1];
      // A digit all keys share orders nothing (the exponent's high bits, mostly).
      bool trivial = false;
      for (int d = 1; d <= 256; ++d) trivial = trivial || start[d] == size;
      if (trivial) continue;
      for (int d = 1; d <= 256; ++d) start[d] += start[d - 1];
      const int to = from ^ 1;
      for (std::size_t i = 0; i < size; ++i) {
        const auto at = start[(keys_[from][i] >> shift) & 0xffu]++;
        keys_[to][at] = keys_[from][i];
        positions_[to][at] = positions_[from][i];
      }
      from = to;
    }
    for (std::size_t p = 0; p < size; ++p) order[p] = positions_[from][p];
  }

 private:
  std::array<std::vector<std::uint32_t>, 2> keys_, positions_;
};

}  // namespace revmerge
