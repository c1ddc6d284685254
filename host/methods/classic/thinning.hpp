#pragma once
// One task's thinning of one tensor (TIES' magnitude trim, DARE's random drop, breadcrumbs'
// outlier trim, DELLA's ranked drop, and the rescale after them), run over the tensor in pieces
// so that a tensor never needs to be in memory whole: the statistics it needs (the trim
// thresholds by exact radix selection, the L1 norms) are gathered in passes over the pieces
// first, then each piece is thinned. Everything summed or counted is kept per fixed block of
// the tensor's elements and accumulated in index order, so the result is bitwise the same for
// any piece sizes and any thread count; a whole tensor is simply one piece.
#include <cstdint>
#include <span>
#include <vector>

#include "methods/classic/combine.hpp"

namespace revmerge {

struct ThinningSpec {
  Sparsify kind = Sparsify::none;
  double density = 1, gamma = 0, epsilon = 0;
  Rescale rescale = Rescale::none;
  bool keep_at_least_one = false;
  std::uint64_t seed = 0, stream = 0;  ///< the random drops' counter streams
  std::vector<std::int64_t> shape;     ///< DELLA's rows (empty: one row)
};

/// A selection's ties walked in index order: of `equal_left` elements at the threshold to keep,
/// how many fall in each block, given how many each block holds (`equal`).
std::vector<std::int64_t> tie_allowances(const std::vector<std::int64_t>& equal, std::int64_t equal_left);

/// Task t's thinning in a combine.
ThinningSpec thinning_spec(const CombineRecipe& recipe, const CombineInput& input, std::int64_t t);

class Thinning {
 public:
  /// Thinning of a tensor of `count` elements.
  Thinning(const ThinningSpec& spec, std::int64_t count);

  /// Pieces hold whole multiples of this many elements (DELLA: a row; others: 1).
  std::int64_t granule() const noexcept { return granule_; }
  /// Whether a tensor in one piece saves work: DELLA with a norms pass keeps that pass's
  /// decisions instead of ranking every row again to apply them.
  bool whole_tensor_saves_work() const noexcept { return spec_.kind == Sparsify::della && !stages_.empty(); }
  /// Whether another pass over every piece (observe, then end_pass) is needed before apply.
  bool wants_pass() const noexcept { return pass_ < stages_.size(); }
  /// The piece of the task's values at elements [first, first + x.size()), pieces in order.
  void observe(std::int64_t first, std::span<const float> x, int threads);
  void end_pass();
  /// Thins the piece at `first` in place; every piece once, in order, after the passes.
  void apply(std::int64_t first, std::span<float> x, int threads);

  /// The whole tensor as one piece: passes, then apply.
  void run(std::span<float> x, int threads);

  /// Whether the thinning also works run by run (PieceMerger's runs): every kind but DELLA,
  /// whose rows are ranked whole.
  bool works_in_runs() const noexcept { return spec_.kind != Sparsify::della; }
  /// Before a pass in runs: the runs come on OpenMP threads numbered below `threads`, each
  /// counting into histograms of its own (added up in end_pass).
  void start_runs(int threads);
  /// observe and apply for one run of elements at `first`, on the calling thread (`slot`: its
  /// OpenMP number). Runs on other threads at once share no statistics block with it (they are
  /// cut at multiples of it); runs of one block come in index order. Neither call throws.
  void observe_run(std::int64_t first, std::span<const float> x, int slot);
  void apply_run(std::int64_t first, std::span<float> x);

  /// The memory its statistics take at most, passes in runs on `threads` threads included.
  std::uint64_t held_bytes(int threads) const;

 private:
  // The backend's driver (thinning_on_backend.cpp) gathers this class's statistics on a device
  // and runs its decisions there; the arithmetic deciding them (end_pass) stays here.
  friend class ThinningOnBackend;
  enum class Stage { high_bits, low_bits, equal_counts, norms };
  // The k largest magnitudes: those above `threshold` (as ordered bits), and of the elements
  // equal to it the first `equal_left` by index.
  struct Rule {
    std::int64_t k = 0;
    bool trivial = false;  // k ≤ 0 or k ≥ count: decided without looking
    std::uint32_t threshold = 0, hi = 0;
    std::int64_t equal_left = 0, above = 0;
    std::vector<std::int64_t> low;            // histogram of the low 16 bits under `hi`
    std::vector<std::int64_t> equal;          // per block: elements at the threshold
    std::vector<std::int64_t> left;           // per block: of those, how many are inside
    std::vector<double> above_sum;            // per block and lane: Σ|x| above the threshold (L1 rescale)
    // A low-bits pass in runs, when the elements whose high bits are `hi` are few: each one's
    // (index << 16 | low bits), in any order, so that the ties are counted per block without
    // another pass over the tensor. `at_hi_used` entries are filled (taken atomically).
    std::vector<std::uint64_t> at_hi;
    std::int64_t at_hi_used = 0;
    double kept_l1() const;                   // Σ|x| over the rule's set
  };

  void della_keep(std::int64_t first, std::span<const float> x, std::vector<unsigned char>& keep, int threads) const;
  // observe and apply on `threads` threads, or (slot ≥ 0) for one run on the calling thread.
  void observe_part(std::int64_t first, std::span<const float> x, int threads, int slot);
  void apply_part(std::int64_t first, std::span<float> x, int threads);
  // After a low-bits pass: the ties counted per block from the elements the rules kept, where
  // every selecting rule kept all of its own (then the pass counting them is not needed).
  bool ties_from_kept();
  // The pass's histograms: the high bits' (one) or each selecting rule's low bits'.
  std::vector<std::vector<std::int64_t>*> pass_histograms();

  ThinningSpec spec_;
  std::int64_t count_ = 0, granule_ = 1;
  bool active_ = false;  // false: the thinning leaves the tensor as it is
  bool zero_all_ = false;
  std::vector<Stage> stages_;
  std::size_t pass_ = 0;
  std::vector<Rule> rules_;  // magnitude: one; outliers: the outer set, then the outliers in it
  std::vector<std::int64_t> high_;  // histogram of the high 16 bits
  std::vector<double> before_, after_;  // per block and lane: Σ|x| before and (drops) after thinning
  double factor_ = 1.0;
  std::vector<std::uint64_t> kept_;  // the drops' decisions, a bit per element (one piece only)
  // The elements a rule's low-bits pass in runs keeps for its ties, at most (8 bytes each).
  static constexpr std::int64_t kTiesKept = std::int64_t{1} << 19;
  // A pass in runs: each slot's histograms, 65536 counts each, slot after slot.
  std::vector<std::int64_t> run_counts_;
  int run_slots_ = 0;
  std::size_t run_histograms_ = 0;
};

}  // namespace revmerge
