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
  /// Ranks from 0 (the smallest) among all the values a pass sees.
  explicit RankSelect(std::vector<std::int64_t> ranks)
      : ranks_(std::move(ranks)), prefix_(ranks_.size(), 0), below_(ranks_.size(), 0),
        histogram_(ranks_.size(), std::vector<std::int64_t>(65536, 0)) {}

  bool wants_pass() const noexcept { return digit_ < 4; }

  /// Values of one piece, in the current pass (every pass sees the same values).
  void add(std::span<const double> values) {
    const int shift = 48 - 16 * digit_;
    for (const double v : values) {
      const std::uint64_t k = key(v);
      for (std::size_t r = 0; r < ranks_.size(); ++r)
        if (digit_ == 0 || (k >> (shift + 16)) == prefix_[r]) ++histogram_[r][(k >> shift) & 0xffffu];
    }
  }

  void end_pass() {
    for (std::size_t r = 0; r < ranks_.size(); ++r) {
      auto& h = histogram_[r];
      std::uint64_t b = 0;
      while (b < 65535 && below_[r] + h[b] <= ranks_[r]) below_[r] += h[b++];
      prefix_[r] = (prefix_[r] << 16) | b;
      std::fill(h.begin(), h.end(), 0);
    }
    ++digit_;
  }

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
  std::vector<std::vector<std::int64_t>> histogram_;
  int digit_ = 0;
};

}  // namespace revmerge
