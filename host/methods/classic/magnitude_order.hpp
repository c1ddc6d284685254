#pragma once
// A row's positions by descending magnitude, equal magnitudes by ascending position: the order
// std::stable_sort gives with |a| > |b|, from a stable least-significant-digit radix sort on the
// magnitudes' bits (for finite floats, ordered as their magnitudes). DELLA ranks every row of
// every task this way; a comparison sort of a 4096-long row was most of its time.
#include <algorithm>
#include <array>
#include <bit>
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
    for (auto& v : items_) v.resize(size);
    // Each element one word, its key (descending magnitude is ascending ~bits) above its
    // position: one store a move, not two. The sort is stable, so ties stay by position.
    std::uint32_t all = ~0u, any = 0;
    for (std::size_t i = 0; i < size; ++i) {
      const auto key = ~kernels::magnitude_bits(value(static_cast<std::int64_t>(i)));
      items_[0][i] = (std::uint64_t{key} << 32) | i;
      all &= key;
      any |= key;
    }
    // Only the bits where the keys differ are sorted on (bf16 values share their low 16, a
    // row's magnitudes their exponent's high bits), in as few digits of at most kMostBits as
    // cover them: each pass moves every element once through memory outside the L1 cache.
    const std::uint32_t differ = all ^ any;
    int from = 0;
    if (differ != 0) {
      const int low = std::countr_zero(differ), width = 32 - std::countl_zero(differ) - low;
      const int passes = (width + kMostBits - 1) / kMostBits, bits = (width + passes - 1) / passes;
      const std::uint64_t mask = (std::uint64_t{1} << bits) - 1;
      // The row cut in kWays stretches scattered side by side, each with its own starts: stretch
      // q's elements of a digit go after stretch q − 1's (still stable), and a run of equal digits
      // is kWays chains of increments through memory, not one.
      const std::size_t stretch = size / kWays;  // the last also takes the rest
      const auto stretch_end = [&](std::size_t q) { return q + 1 < kWays ? (q + 1) * stretch : size; };
      starts_.resize(2 * kWays << bits);  // the starts, then the odd halves' counts
      std::array<std::uint32_t*, kWays> start;
      for (std::size_t q = 0; q < kWays; ++q) start[q] = starts_.data() + (q << bits);
      for (int p = 0; p < passes; ++p) {
        const int shift = 32 + low + p * bits, to = from ^ 1;
        const std::uint64_t* item = items_[from].data();
        std::uint64_t* item_to = items_[to].data();
        const auto digit = [&](std::size_t i) { return static_cast<std::size_t>((item[i] >> shift) & mask); };
        // Counted with the stretches side by side too, each stretch's even and odd elements in
        // counters of their own (added up below), for the same reason: four chains.
        std::fill(starts_.begin(), starts_.end(), 0u);
        std::uint32_t* odd = starts_.data() + (kWays << bits);
        for (std::size_t i = 0; i + 1 < stretch; i += 2)
          for (std::size_t q = 0; q < kWays; ++q) {
            ++start[q][digit(q * stretch + i)];
            ++odd[(q << bits) + digit(q * stretch + i + 1)];
          }
        for (std::size_t q = 0; q < kWays; ++q)
          for (std::size_t i = q * stretch + (stretch & ~std::size_t{1}); i < stretch_end(q); ++i) ++start[q][digit(i)];
        std::uint32_t at = 0;
        for (std::size_t d = 0; d <= mask; ++d)
          for (std::size_t q = 0; q < kWays; ++q) {
            const std::uint32_t count = start[q][d] + odd[(q << bits) + d];
            start[q][d] = at;
            at += count;
          }
        for (std::size_t i = 0; i < stretch; ++i)
          for (std::size_t q = 0; q < kWays; ++q) {
            const std::size_t j = q * stretch + i;
            item_to[start[q][digit(j)]++] = item[j];
          }
        for (std::size_t j = kWays * stretch; j < size; ++j) item_to[start[kWays - 1][digit(j)]++] = item[j];
        from = to;
      }
    }
    for (std::size_t p = 0; p < size; ++p) order[p] = static_cast<std::uint32_t>(items_[from][p]);
  }

 private:
  static constexpr int kMostBits = 11;  // 2048 starts a stretch
  static constexpr std::size_t kWays = 2;
  std::array<std::vector<std::uint64_t>, 2> items_;
  std::vector<std::uint32_t> starts_;
};

}  // namespace revmerge
