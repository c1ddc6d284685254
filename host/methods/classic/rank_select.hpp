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

  /// After the passes: how many values lie below ranks[r]'s value, and how many equal it.
  std::int64_t below(std::size_t r) const { return below_[r]; }
  std::int64_t equal(std::size_t r) const { return equal_[r]; }

  /// The value at ranks[r], after the four passes.
  double value(std::size_t r) const {
    const std::uint64_t k = prefix_[r];
    return std::bit_cast<double>(k >> 63 ? k & ~(std::uint64_t{1} << 63) : ~k);
  }

 private:
  // Order-preserving bits: positive values above negative ones, each in their own order.
  static std::uint64_t key(double v) {
    const auto b = std::bit_cast<std::uint64_t>(v);
    return b >> 63 ? ~b : b | (std::uint64_t{1} << 63);
  }

  std::vector<std::int64_t> ranks_;
  std::vector<std::uint64_t> prefix_;  // the digits found so far
  std::vector<std::int64_t> below_;    // values below the prefix's range
  std::vector<std::int64_t> equal_;    // values inside it (at the end: equal to the value)
  std::vector<std::int64_t> first_;    // the first pass's histogram
  std::vector<std::vector<std::int64_t>> histogram_;
  int digit_ = 0;
};

}  // namespace revmerge
