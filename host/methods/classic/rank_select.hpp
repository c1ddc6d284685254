#pragma once
// The values at chosen ascending ranks of many doubles seen in passes (a tensor's pieces), exact:
// a radix selection on the values' ordered bits, 16 bits a pass (four passes), with nothing kept
// but one histogram per rank. Used where a method needs quantiles of a whole tensor that is
// merged in pieces.
#include <omp.h>

#include <algorithm>
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

  /// Values of one piece, in the current pass (every pass sees the same values), on `threads`
  /// threads where there are many (each counting into histograms of its own, added after: the
  /// same counts).
  void add(std::span<const double> values, int threads = 1) {
    add_made(static_cast<std::int64_t>(values.size()),
             [&](std::int64_t first, std::int64_t count, double*) { return values.subspan(first, count); }, threads);
  }

  /// `total` values of one piece made a block at a time where they are counted:
  /// make(first, count, scratch) returns values [first, first + count) (in `scratch`, room for
  /// count doubles, or elsewhere), so that a piece's values need not be held at once.
  template <class Make>
  void add_made(std::int64_t total, Make&& make, int threads) {
    constexpr std::int64_t kBlock = 4096, kPerThread = std::int64_t{1} << 20;
    const int used = static_cast<int>(std::clamp<std::int64_t>(total / kPerThread + 1, 1, std::max(threads, 1)));
    const std::size_t histograms = digit_ == 0 ? 1 : ranks_.size();
#pragma omp parallel num_threads(used)
    {
      std::vector<std::vector<std::int64_t>> own(used > 1 ? histograms : 0, std::vector<std::int64_t>(65536, 0));
      const std::span<std::vector<std::int64_t>> into =
          used > 1 ? std::span(own) : digit_ == 0 ? std::span(&first_, 1) : std::span(histogram_);
      std::vector<double> scratch(static_cast<std::size_t>(kBlock));
      const auto t = omp_get_thread_num(), parts = omp_get_num_threads();
      const std::int64_t from = total * t / parts, to = total * (t + 1) / parts;
      for (std::int64_t b = from; b < to; b += kBlock) {
        const std::int64_t count = std::min(kBlock, to - b);
        this->count(std::span<const double>(make(b, count, scratch.data())), into);
      }
      if (used > 1) {
#pragma omp critical(revmerge_rank_select)
        for (std::size_t h = 0; h < histograms; ++h) {
          auto& sum = digit_ == 0 ? first_ : histogram_[h];
          for (std::size_t v = 0; v < 65536; ++v) sum[v] += own[h][v];
        }
      }
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

  // The values into `h`: at digit 0 its one histogram of the high digits, whatever the ranks;
  // after, rank r's histogram h[r] of the digit, for the values under its prefix (a sweep per
  // rank: the callers' blocks of values stay in cache).
  void count(std::span<const double> values, std::span<std::vector<std::int64_t>> h) const {
    if (digit_ == 0) {
      std::int64_t* c = h[0].data();
      for (const double v : values) ++c[key(v) >> 48];
      return;
    }
    const int shift = 48 - 16 * digit_;
    for (std::size_t r = 0; r < ranks_.size(); ++r) {
      std::int64_t* c = h[r].data();
      const std::uint64_t prefix = prefix_[r];
      for (const double v : values) {
        const std::uint64_t k = key(v);
        if ((k >> (shift + 16)) == prefix) ++c[(k >> shift) & 0xffffu];
      }
    }
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
