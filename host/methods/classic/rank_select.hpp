#pragma once
// The values at chosen ascending ranks of many doubles seen in passes (a tensor's pieces), exact:
// a radix selection on the values' ordered bits, 16 bits a pass (four passes), with nothing kept
// but one histogram per rank. Used where a method needs quantiles of a whole tensor that is
// merged in pieces.
#include <array>
#include <bit>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/elementwise.hpp"

namespace revmerge {

class RankSelect {
 public:
  /// Ranks from 0 (the smallest) among all the values a pass sees; they may also be given later,
  /// by ranks(), up to the end of the first pass.
  explicit RankSelect(std::vector<std::int64_t> ranks = {}) : first_(65536, 0) { this->ranks(std::move(ranks)); }

  void ranks(std::vector<std::int64_t> ranks) {
    ranks_ = std::move(ranks);
    prefix_.assign(ranks_.size(), 0);
    below_.assign(ranks_.size(), 0);
    equal_.assign(ranks_.size(), 0);
    histogram_.assign(ranks_.size(), std::vector<std::int64_t>(65536, 0));
  }

  bool wants_pass() const noexcept { return digit_ < 4; }

  /// Values of one piece, in the current pass (every pass sees the same values).
  void add(std::span<const double> values) {
    if (digit_ == 0) {  // the high digits of all values: one histogram, whatever the ranks
      for (const double v : values) ++first_[key(v) >> 48];
      return;
    }
    const int shift = 48 - 16 * digit_;
    for (const double v : values) {
      const std::uint64_t k = key(v);
      for (std::size_t r = 0; r < ranks_.size(); ++r)
        if ((k >> (shift + 16)) == prefix_[r]) ++histogram_[r][(k >> shift) & 0xffffu];
    }
  }

  void end_pass() {
    for (std::size_t r = 0; r < ranks_.size(); ++r) {
      const auto& h = digit_ == 0 ? first_ : histogram_[r];
      std::uint64_t b = 0;
      while (b < 65535 && below_[r] + h[b] <= ranks_[r]) below_[r] += h[b++];
      prefix_[r] = (prefix_[r] << 16) | b;
      equal_[r] = h[b];
      if (digit_ > 0) std::fill(histogram_[r].begin(), histogram_[r].end(), 0);
    }
    ++digit_;
  }

  /// The pass's digit (0: bits 63 … 48 of the values' ordered bits, kernels::ordered_bits), and
  /// the digits found so far for ranks[r]: the values a histogram of this pass counts are those
  /// whose digits above it are prefix(r) (all of them at digit 0).
  int digit() const noexcept { return digit_; }
  std::uint64_t prefix(std::size_t r) const { return prefix_[r]; }
  /// A histogram of this pass's digit made elsewhere (a backend's, over the same values): the
  /// values add() would have counted.
  void add_histogram(std::size_t r, std::span<const std::uint64_t> counts) {
    auto& h = digit_ == 0 ? first_ : histogram_[r];
    for (std::size_t b = 0; b < h.size(); ++b) h[b] += static_cast<std::int64_t>(counts[b]);
  }

  /// After the passes: how many values lie below ranks[r]'s value, and how many equal it.
  std::int64_t below(std::size_t r) const { return below_[r]; }
  std::int64_t equal(std::size_t r) const { return equal_[r]; }

  /// The value at ranks[r], after the four passes.
  double value(std::size_t r) const {
    const std::uint64_t k = prefix_[r];
    return std::bit_cast<double>(k >> 63 ? k & ~(std::uint64_t{1} << 63) : ~k);
  }

 private:
  static std::uint64_t key(double v) { return kernels::ordered_bits(v); }

  std::vector<std::int64_t> ranks_;
  std::vector<std::uint64_t> prefix_;  // the digits found so far
  std::vector<std::int64_t> below_;    // values below the prefix's range
  std::vector<std::int64_t> equal_;    // values inside it (at the end: equal to the value)
  std::vector<std::int64_t> first_;    // the first pass's histogram
  std::vector<std::vector<std::int64_t>> histogram_;
  int digit_ = 0;
};

}  // namespace revmerge
