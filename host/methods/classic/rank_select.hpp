#pragma once
// The values at chosen ascending ranks of many doubles seen in passes (a tensor's pieces), exact:
// a radix selection on the values' ordered bits, 16 bits a pass (four passes), with nothing kept
// but one histogram per rank — or, where allowed (keep_at_most), fewer passes: once few values
// share a rank's digits found so far, the next pass keeps them and the rank's value is picked
// among them — or, where allowed (sample_first), two passes of comparisons: a sample first, then
// the values inside each rank's bracket from it (rank_brackets.hpp). Used where a method needs
// quantiles of a whole tensor that is merged in pieces.
#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/elementwise.hpp"
#include "methods/classic/rank_brackets.hpp"

namespace revmerge {

class RankSelect {
 public:
  /// What a selection over a tensor of `numel` values keeps at most (keep_at_most): a byte per
  /// value, 32 MiB at most. Measured on arcee_fusion's importances of a 7b-shaped model: the three
  /// quartiles' high 16 bits left about 6 % of an MLP tensor in question, so its fourth of the
  /// passes is its second; an embedding's third.
  static std::int64_t keep_limit(std::int64_t numel) { return std::min<std::int64_t>(std::int64_t{1} << 22, numel / 8); }
  /// The most memory a selection of `ranks` ranks over `numel` values holds, counted on
  /// `threads` threads with keep_at_most(keep_limit(numel)): the first digit's histogram, each
  /// rank's, each counting thread's, and the values kept; with `sampled` (sample_first), the
  /// sample too.
  static std::uint64_t held_bytes(std::size_t ranks, std::int64_t numel, int threads, bool sampled = false) {
    const auto histograms = 1 + ranks + static_cast<std::uint64_t>(std::max(threads, 1)) * std::max<std::size_t>(ranks, 1);
    const auto plan = sampled ? sample_plan(numel, ranks, keep_limit(numel)) : SamplePlan{};
    return histograms * 65536 * sizeof(std::int64_t) +
           static_cast<std::uint64_t>(keep_limit(numel) + (plan.on ? plan.size : 0)) * sizeof(double);
  }

  /// Ranks from 0 (the smallest) among all the values a pass sees; they may also be given later,
  /// by ranks(), up to the end of the first pass.
  explicit RankSelect(std::vector<std::int64_t> ranks = {}) : first_(65536, 0) { this->ranks(std::move(ranks)); }

  void ranks(std::vector<std::int64_t> ranks) {
    ranks_ = std::move(ranks);
    prefix_.assign(ranks_.size(), 0);
    below_.assign(ranks_.size(), 0);
    equal_.assign(ranks_.size(), 0);
    at_lo_.assign(ranks_.size(), 0);
    at_hi_.assign(ranks_.size(), 0);
    histogram_.assign(ranks_.size(), std::vector<std::int64_t>(65536, 0));
  }

  /// Lets the passes end early: once the values still in question for the ranks (those sharing
  /// a rank's digits found so far, counted once per rank) are at most `most` in all, the next
  /// pass keeps them (8 bytes each) and each rank's value is picked among them. 0 (the default):
  /// four passes of histograms, as a backend's (add_histogram) must take.
  void keep_at_most(std::int64_t most) { keep_most_ = most; }

  /// Lets the first two passes be a sample and a pass over each rank's bracket from it
  /// (rank_brackets.hpp), where sample_plan allows: `numel` values a pass (every pass sees them
  /// all) and `ranks` ranks (their values may still come by ranks(), up to the end of the first
  /// pass). A tensor of at most 2^18 values is sampled whole: one pass. Where a bracket misses
  /// its rank, the passes go on as radix passes (keep_at_most's), so the values are the same.
  void sample_first(std::int64_t numel, std::size_t ranks) {
    const auto plan = sample_plan(numel, ranks, keep_limit(numel));
    if (!plan.on || digit_ != 0) return;
    phase_ = Phase::sample;
    numel_ = numel;
    stride_ = plan.stride;
    sample_.reserve(static_cast<std::size_t>(plan.size));
  }
  /// Whether the values came from the sample and brackets (after the passes).
  bool bracketed() const noexcept { return bracketed_; }

  bool wants_pass() const noexcept { return digit_ < 4; }
  /// Whether this pass keeps the values in question instead of counting a digit.
  bool keeping() const noexcept { return keeping_; }

  /// Values of one piece, in the current pass (every pass sees the same values), on `threads`
  /// threads where there are many (each counting into histograms of its own, kept for the pass
  /// and added up at its end: the same counts).
  void add(std::span<const double> values, int threads = 1) {
    add_made(static_cast<std::int64_t>(values.size()),
             [&](std::int64_t first, std::int64_t count, double*) { return values.subspan(first, count); }, threads);
  }

  /// `total` values of one piece made a block at a time where they are counted:
  /// make(first, count, scratch) returns values [first, first + count) (in `scratch`, room for
  /// count doubles, or elsewhere), so that a piece's values need not be held at once.
  template <class Make>
  void add_made(std::int64_t total, Make&& make, int threads) {
    if (phase_ != Phase::radix) return add_sampled(total, make, threads);
    constexpr std::int64_t kBlock = 4096;
    const int used = static_cast<int>(std::clamp<std::int64_t>(total / kBlock, 1, std::max(threads, 1)));
    const std::size_t histograms = digit_ == 0 ? 1 : ranks_.size();
    // Histograms of each thread's own, kept from piece to piece: added up once a piece, they cost
    // more than the counting of a cache-sized piece (so one thread counted alone).
    if (!keeping_ && used > 1 && slot_counts_.size() < static_cast<std::size_t>(used) * histograms * 65536)
      slot_counts_.resize(static_cast<std::size_t>(used) * histograms * 65536, 0);
#pragma omp parallel num_threads(used)
    {
      std::vector<double> scratch(static_cast<std::size_t>(kBlock)), block(keeping_ ? scratch.size() : 0);
      std::vector<std::int64_t*> into(histograms);
      const auto t = omp_get_thread_num(), parts = omp_get_num_threads();
      for (std::size_t h = 0; h < histograms; ++h)
        into[h] = used > 1 ? slot_counts_.data() + (static_cast<std::size_t>(t) * histograms + h) * 65536
                  : digit_ == 0 ? first_.data()
                                : histogram_[h].data();
      const std::int64_t from = total * t / parts, to = total * (t + 1) / parts;
      for (std::int64_t b = from; b < to; b += kBlock) {
        const std::int64_t count = std::min(kBlock, to - b);
        const std::span<const double> values(make(b, count, scratch.data()));
        // Keeping: each block's values in question into the ranks' places, taken atomically.
        if (keeping_) keep(values, block);
        else this->count(values, into);
      }
    }
  }

  /// Before a pass whose values come in runs (add_run) on threads numbered below `slots`.
  void start_runs(int slots) {
    const std::size_t histograms = digit_ == 0 ? 1 : ranks_.size();
    const auto need = static_cast<std::size_t>(std::max(slots, 1)) * histograms * 65536;
    if (phase_ == Phase::radix && !keeping_ && slot_counts_.size() < need) slot_counts_.resize(need, 0);
  }

  /// `total` values of one run, values [first, first + total) of the pass, made a block at a time
  /// as add_made's are, on the calling thread: runs come on several threads at once (each its
  /// `slot`, below start_runs'), in any order, and a pass's runs cover its values once. The same
  /// counts, sample and values as add_made's over the same values.
  template <class Make>
  void add_run(int slot, std::int64_t first, std::int64_t total, Make&& make) {
    constexpr std::int64_t kBlock = 4096;
    const std::size_t ranks = phase_ == Phase::brackets ? ranks_.size() : 0;
    const std::size_t histograms = digit_ == 0 ? 1 : ranks_.size();
    thread_local RunScratch scratch;  // reused run to run: no fresh pages for each
    scratch.fit(static_cast<std::size_t>(kBlock), ranks);
    auto& mine = scratch.mine;
    mine.clear();
    BracketCounts counts;
    auto& into = scratch.histograms;
    into.clear();
    if (phase_ == Phase::radix && !keeping_)
      for (std::size_t h = 0; h < histograms; ++h)
        into.push_back(slot_counts_.data() + (static_cast<std::size_t>(slot) * histograms + h) * 65536);
    for (std::int64_t b = 0; b < total; b += kBlock) {
      const std::int64_t count = std::min(kBlock, total - b);
      if (phase_ == Phase::sample && stride_ > 1) {  // the sampled values alone are made
        sampled_places(first + b, count, stride_, scratch.places);
        for (const std::int64_t g : scratch.places) mine.push_back(key(make(g - first, 1, scratch.values.data())[0]));
        continue;
      }
      const std::span<const double> values(make(b, count, scratch.values.data()));
      if (phase_ == Phase::sample) {
        for (const double v : values) mine.push_back(key(v));
      } else if (ranks != 0) {
        bracket_block(values.data(), count, brackets_.data(), ranks, scratch.keys.data(), scratch.flags.data(),
                      scratch.into.data(), counts);
        for (std::size_t r = 0; r < ranks; ++r) keep_inside(r, scratch.into[r], counts.inside[r]);
      } else if (keeping_) {
        keep(values, scratch.block);
      } else {
        this->count(values, into);
      }
    }
    if (phase_ != Phase::radix) {
      add_sampled_counts(mine, counts, ranks);
      std::atomic_ref(seen_).fetch_add(total);
    }
  }

  void end_pass() {
    if (phase_ == Phase::sample) return end_sample();
    if (phase_ == Phase::brackets) return end_brackets();
    if (keeping_) return pick();
    // The threads' histograms into the pass's, thread by thread.
    const std::size_t histograms = digit_ == 0 ? 1 : ranks_.size();
    for (std::size_t at = 0; at < slot_counts_.size(); at += 65536) {
      const std::size_t h = at / 65536 % histograms;
      auto& sum = digit_ == 0 ? first_ : histogram_[h];
      for (std::size_t v = 0; v < 65536; ++v) sum[v] += std::exchange(slot_counts_[at + v], 0);
    }
    for (std::size_t r = 0; r < ranks_.size(); ++r) {
      const auto& h = digit_ == 0 ? first_ : histogram_[r];
      std::uint64_t b = 0;
      while (b < 65535 && below_[r] + h[b] <= ranks_[r]) below_[r] += h[b++];
      prefix_[r] = (prefix_[r] << 16) | b;
      equal_[r] = h[b];
      if (digit_ > 0) std::fill(histogram_[r].begin(), histogram_[r].end(), 0);
    }
    ++digit_;
    if (digit_ == 4) slot_counts_ = {};
    std::int64_t in_question = 0;
    for (const auto e : equal_) in_question += e;
    keeping_ = digit_ < 4 && keep_most_ > 0 && in_question <= keep_most_;
    if (!keeping_) return;
    slot_counts_ = {};
    kept_.resize(ranks_.size());
    for (std::size_t r = 0; r < ranks_.size(); ++r) kept_[r].resize(static_cast<std::size_t>(equal_[r]));
    filled_.assign(ranks_.size(), 0);
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

  /// The value at ranks[r], after the passes.
  double value(std::size_t r) const {
    const std::uint64_t k = prefix_[r];
    return std::bit_cast<double>(k >> 63 ? k & ~(std::uint64_t{1} << 63) : ~k);
  }

 private:
  static std::uint64_t key(double v) { return kernels::ordered_bits(v); }

  // A thread's memory for its runs' blocks (add_run).
  struct RunScratch {
    std::vector<double> values, block;
    std::vector<std::int64_t> places;
    std::vector<std::uint64_t> mine, keys, inside;
    std::vector<std::uint8_t> flags;
    std::vector<std::uint64_t*> into;
    std::vector<std::int64_t*> histograms;  // the slot's, in a radix pass
    void fit(std::size_t block_size, std::size_t ranks) {
      values.resize(block_size);
      block.resize(block_size);
      keys.resize(block_size);
      flags.resize(block_size);
      inside.resize(std::max<std::size_t>(ranks, 1) * block_size);
      into.resize(ranks);
      for (std::size_t r = 0; r < ranks; ++r) into[r] = inside.data() + r * block_size;
    }
  };

  // A sampled pass's values (sample_first) on `threads` threads, each taking an equal stretch
  // of the piece as one run (add_run).
  template <class Make>
  void add_sampled(std::int64_t total, Make& make, int threads) {
    constexpr std::int64_t kBlock = 4096;
    const int used = static_cast<int>(std::clamp<std::int64_t>(total / kBlock, 1, std::max(threads, 1)));
    const std::int64_t seen = seen_;
#pragma omp parallel num_threads(used)
    {
      const auto t = omp_get_thread_num(), parts = omp_get_num_threads();
      const std::int64_t from = total * t / parts, to = total * (t + 1) / parts;
      add_run(t, seen + from, to - from,
              [&](std::int64_t first, std::int64_t count, double* scratch) { return make(from + first, count, scratch); });
    }
  }

  // A thread's sampled keys and bracket counts into the pass's, one thread at a time.
  void add_sampled_counts(const std::vector<std::uint64_t>& mine, const BracketCounts& counts, std::size_t ranks) {
#pragma omp critical(revmerge_rank_select)
    {
      sample_.insert(sample_.end(), mine.begin(), mine.end());
      for (std::size_t r = 0; r < ranks; ++r) {
        below_[r] += counts.below[r];
        at_lo_[r] += counts.at_lo[r];
        at_hi_[r] += counts.at_hi[r];
      }
    }
  }

  // m keys inside rank r's bracket into its room, at a place taken atomically (beyond the room:
  // counted only, and the bracket pass falls back).
  void keep_inside(std::size_t r, const std::uint64_t* keys, std::int64_t m) {
    if (m == 0) return;
    const auto at = static_cast<std::size_t>(std::atomic_ref(filled_[r]).fetch_add(m));
    if (at + static_cast<std::size_t>(m) <= inside_[r].size())
      std::copy_n(keys, m, inside_[r].begin() + static_cast<std::ptrdiff_t>(at));
  }

  void check_seen(const char* pass) const {
    if (seen_ != numel_)
      throw std::logic_error(std::string("RankSelect: a ") + pass + " pass saw " +
                             std::to_string(seen_) + " values, not the " + std::to_string(numel_) +
                             " it was told of");
  }

  // After the sample: each rank's value where the sample is every value, else the brackets and
  // their room (the passes fall back where the room would exceed keep_limit).
  void end_sample() {
    check_seen("sampling");
    const std::size_t ranks = ranks_.size();
    for (const auto rank : ranks_)
      if (rank < 0 || rank >= numel_)
        throw std::logic_error("RankSelect: a rank outside the values");
    if (ranks == 0 || ranks > kMostBracketRanks) return restart_radix();
    if (stride_ == 1) {
      std::sort(sample_.begin(), sample_.end());
      for (std::size_t r = 0; r < ranks; ++r) {
        const std::uint64_t k = sample_[static_cast<std::size_t>(ranks_[r])];
        const auto lower = std::lower_bound(sample_.begin(), sample_.end(), k);
        below_[r] = lower - sample_.begin();
        equal_[r] = std::upper_bound(lower, sample_.end(), k) - lower;
        prefix_[r] = k;
      }
      return finish_bracketed();
    }
    brackets_ = brackets_from_sample(sample_, ranks_, numel_, stride_);
    std::int64_t room = keep_limit(numel_);
    inside_.assign(ranks, {});
    filled_.assign(ranks, 0);
    for (std::size_t r = 0; r < ranks; ++r) {
      const std::int64_t want =
          brackets_[r].expected_inside + brackets_[r].expected_inside / 4 + 4096;
      if (want > room) return restart_radix();
      room -= want;
      inside_[r].resize(static_cast<std::size_t>(want));
    }
    std::vector<std::uint64_t>().swap(sample_);
    std::fill(below_.begin(), below_.end(), 0);
    std::fill(at_lo_.begin(), at_lo_.end(), 0);
    std::fill(at_hi_.begin(), at_hi_.end(), 0);
    phase_ = Phase::brackets;
    seen_ = 0;
  }

  // After the bracket pass: each rank's value from its counts and the keys inside, or radix
  // passes again where a bracket missed its rank or its room overflowed.
  void end_brackets() {
    check_seen("bracket");
    for (std::size_t r = 0; r < ranks_.size(); ++r) {
      const std::int64_t inside = filled_[r], rank = ranks_[r], lt = below_[r], lo = at_lo_[r];
      if (inside > static_cast<std::int64_t>(inside_[r].size()) || rank < lt ||
          rank >= lt + lo + inside + at_hi_[r])
        return restart_radix();
      if (rank < lt + lo) {
        prefix_[r] = brackets_[r].lo, equal_[r] = lo;
      } else if (rank >= lt + lo + inside) {
        prefix_[r] = brackets_[r].hi, below_[r] = lt + lo + inside, equal_[r] = at_hi_[r];
      } else {
        auto& w = inside_[r];
        w.resize(static_cast<std::size_t>(inside));
        const auto at = w.begin() + (rank - lt - lo);
        std::nth_element(w.begin(), at, w.end());
        const std::uint64_t k = *at;
        below_[r] =
            lt + lo + std::count_if(w.begin(), w.end(), [k](std::uint64_t x) { return x < k; });
        equal_[r] = std::count(w.begin(), w.end(), k);
        prefix_[r] = k;
      }
    }
    finish_bracketed();
  }

  void finish_bracketed() {
    digit_ = 4;
    phase_ = Phase::radix;
    bracketed_ = true;
    std::vector<std::uint64_t>().swap(sample_);
    inside_ = {};
    filled_ = {};
  }

  // The passes from the start as radix passes (keep_at_most's), the sampled ones set aside.
  void restart_radix() {
    phase_ = Phase::radix;
    digit_ = 0;
    keeping_ = false;
    seen_ = 0;
    std::fill(first_.begin(), first_.end(), 0);
    for (auto& h : histogram_) std::fill(h.begin(), h.end(), 0);
    std::fill(prefix_.begin(), prefix_.end(), 0);
    std::fill(below_.begin(), below_.end(), 0);
    std::fill(equal_.begin(), equal_.end(), 0);
    slot_counts_ = {};
    kept_ = {};
    std::vector<std::uint64_t>().swap(sample_);
    inside_ = {};
    filled_ = {};
  }

  // The values whose digits so far are rank r's prefix, appended to kept_[r] (`block`: room for
  // values.size() of them). More than the last pass counted leaves kept_[r] short (pick fails).
  void keep(std::span<const double> values, std::vector<double>& block) {
    const int shift = 64 - 16 * digit_;
    for (std::size_t r = 0; r < ranks_.size(); ++r) {
      const std::uint64_t prefix = prefix_[r];
      std::size_t m = 0;
      for (const double v : values) {
        block[m] = v;
        m += (key(v) >> shift) == prefix;
      }
      if (m == 0) continue;
      const auto at = static_cast<std::size_t>(std::atomic_ref(filled_[r]).fetch_add(static_cast<std::int64_t>(m)));
      if (at + m <= kept_[r].size()) std::copy_n(block.begin(), m, kept_[r].begin() + static_cast<std::ptrdiff_t>(at));
    }
  }

  // After a pass that kept the values in question: each rank's value among its own, by their
  // ordered bits (the order of the radix passes), and the counts below and at it.
  void pick() {
    const auto before = [](double a, double b) { return key(a) < key(b); };
    for (std::size_t r = 0; r < ranks_.size(); ++r) {
      auto& kept = kept_[r];
      const auto at = ranks_[r] - below_[r];
      if (filled_[r] != static_cast<std::int64_t>(kept.size()) || at < 0 || at >= filled_[r])
        throw std::logic_error("RankSelect: a pass saw other values than the one before");
      std::nth_element(kept.begin(), kept.begin() + at, kept.end(), before);
      const std::uint64_t k = key(kept[static_cast<std::size_t>(at)]);
      below_[r] += std::count_if(kept.begin(), kept.end(), [k](double x) { return key(x) < k; });
      equal_[r] = std::count_if(kept.begin(), kept.end(), [k](double x) { return key(x) == k; });
      prefix_[r] = k;
      kept = {};
    }
    keeping_ = false;
    digit_ = 4;
  }

  // The values into `h`: at digit 0 its one histogram of the high digits, whatever the ranks;
  // after, rank r's histogram h[r] of the digit, for the values under its prefix (a sweep per
  // rank: the callers' blocks of values stay in cache).
  void count(std::span<const double> values, std::span<std::int64_t* const> h) const {
    if (digit_ == 0) {
      std::int64_t* c = h[0];
      for (const double v : values) ++c[key(v) >> 48];
      return;
    }
    const int shift = 48 - 16 * digit_;
    for (std::size_t r = 0; r < ranks_.size(); ++r) {
      std::int64_t* c = h[r];
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
  std::vector<std::int64_t> slot_counts_;  // each counting thread's histograms, thread after thread
  std::vector<std::vector<double>> kept_;  // a keeping pass's values in question, per rank
  std::vector<std::int64_t> filled_;       // how many of each rank's are in (taken atomically)
  std::int64_t keep_most_ = 0;
  bool keeping_ = false;
  int digit_ = 0;
  // The sampled passes (sample_first): which one is next, the values a pass sees (numel_) and
  // has seen, the sample's stride and keys, the brackets, and each rank's counts at them and
  // keys inside (inside_, filled as filled_ says).
  enum class Phase { radix, sample, brackets };
  Phase phase_ = Phase::radix;
  bool bracketed_ = false;
  std::int64_t numel_ = 0, seen_ = 0, stride_ = 0;
  std::vector<std::uint64_t> sample_;
  std::vector<Bracket> brackets_;
  std::vector<std::int64_t> at_lo_, at_hi_;
  std::vector<std::vector<std::uint64_t>> inside_;
};

}  // namespace revmerge
