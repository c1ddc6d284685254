// mergekit's sce on full models, in pieces (piece_merge.hpp): the elements whose task vectors
// vary most across the tasks are kept — the top ⌊select_topk · m⌋ by population variance, m the
// elements whose variance is not 0, equal variances to the lower index — the others zeroed in
// every task; each task weighted by its mean square over the tensor (summing to 1; the squares
// summed in the statistics blocks' lanes, as the backends sum them); then signs
// elected and the agreeing values averaged (combine.hpp). The variance threshold is found by
// an exact selection (RankSelect: a sample, then the variances inside the threshold's bracket
// from it; radix passes where that does not fit, the last keeping the variances still in
// question once they are few), then in one more pass the ties at it counted per block (the
// blocks in index order, each keeping what those before it left) and the tasks' mean squares
// summed over the kept elements; the same bits as combine_stack's whole-tensor SCE for any piece
// size (on a backend: four passes of histograms).
#include <algorithm>
#include <cmath>

#include "methods/classic/combine.hpp"
#include "methods/classic/for_blocks.hpp"
#include "methods/classic/piece_merge.hpp"
#include "methods/classic/rank_select.hpp"
#include "methods/classic/thinning.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// The ties at the threshold are counted per block, and a piece's blocks are its threads' work: 16
// blocks in a 2^18-element piece, so that 16 cores all take part (at 2^16 only 4 did).
constexpr i64 kBlock = i64{1} << 14;
static_assert(kBlock % kernels::kStatBlock == 0, "a block holds whole statistics blocks");

i64 stat_blocks(i64 numel) { return (numel + kernels::kStatBlock - 1) / kernels::kStatBlock; }

class ScePieces final : public PieceMerger {
 public:
  ScePieces(const ClassicMergeOptions& o, i64 numel, std::size_t n, bool has_base)
      : recipe_(make_recipe(o, Convention::mergekit)), topk_(o.select_topk.value_or(1.0)), numel_(numel),
        has_base_(has_base),
        lanes_(n, std::vector<double>(static_cast<std::size_t>(stat_blocks(numel) * kernels::kStatLanes), 0.0)) {
    const i64 blocks = (numel + kBlock - 1) / kBlock;
    equal_.assign(static_cast<std::size_t>(blocks), 0);
    stage_ = topk_ < 1 ? Stage::select : Stage::energy;
    select_.keep_at_most(RankSelect::keep_limit(numel));
    select_.sample_first(numel, 1);
  }
  std::uint64_t extra_bytes_per_element() const override { return 9; }  // a piece's variances, keep bytes
  std::uint64_t held_bytes(int threads) const override {
    std::uint64_t held = 2 * equal_.size() * sizeof(i64);  // equal_, and part_left_ at most as many
    for (const auto& l : lanes_) held += l.size() * sizeof(double);
    return held + RankSelect::held_bytes(1, numel_, threads, true);  // the threshold's selection
  }
  bool wants_pass() const override { return stage_ != Stage::done; }
  bool task_vectors() const override { return has_base_; }
  void observe(const TensorInputs& in, int threads) override {
    const i64 n = static_cast<i64>(in.n), count = static_cast<i64>(in.count);
    const float* x = in.stacked.data();
    var_.resize(in.count);
    double* var = var_.data();
    if (stage_ == Stage::select) {
      by_blocks(in.first, count, threads, [&](i64 j0, i64 j1) { element_variances(x, n, count, j0, j1, var + j0); });
      if (first_pass_) nonzero_ += std::count_if(var_.begin(), var_.end(), [](double v) { return v != 0; });
      select_.add(var_, threads);
    } else if (stage_ == Stage::ties_and_energy) {
      // The ties at the threshold and the tasks' squares in one pass: each block's (or the
      // part of it in this piece) ties counted, then kept lower index first — the blocks taken
      // in index order, so that a block's allowance is what the blocks before it left — and the
      // kept elements' squares summed, the piece's variances made once for both.
      const i64 b0 = in.first / kBlock;
      part_left_.assign(static_cast<std::size_t>((in.first + count - 1) / kBlock - b0 + 1), 0);
      by_blocks(in.first, count, threads, [&](i64 j0, i64 j1) {
        element_variances(x, n, count, j0, j1, var + j0);
        i64 ties = 0;
        for (i64 j = j0; j < j1; ++j) ties += var[j] == threshold_;
        part_left_[static_cast<std::size_t>((in.first + j0) / kBlock - b0)] = ties;
      });
      for (std::size_t p = 0; p < part_left_.size(); ++p) {
        const i64 ties = part_left_[p];
        part_left_[p] = std::clamp<i64>(equal_left_ - ties_before_, 0, ties);
        equal_[static_cast<std::size_t>(b0) + p] += part_left_[p];
        ties_before_ += ties;
      }
      add_kept_squares(
          in, threads, [&](i64 j) -> i64& { return part_left_[static_cast<std::size_t>((in.first + j) / kBlock - b0)]; },
          /*variances=*/true);
    } else {  // energy alone: every element kept, or none (no variance decides)
      add_kept_squares(in, threads, [&](i64 j) -> i64& { return equal_[static_cast<std::size_t>((in.first + j) / kBlock)]; },
                       /*variances=*/false);
    }
  }
  void end_pass() override {
    if (stage_ == Stage::select) {
      if (first_pass_) {
        first_pass_ = false;
        keep_ = topk_ <= 0 ? 0 : static_cast<i64>(static_cast<double>(nonzero_) * topk_);
        if (keep_ <= 0 || keep_ >= numel_) {  // none or all: nothing to select
          stage_ = Stage::energy;
          return;
        }
        select_.ranks({numel_ - keep_});  // the k-th largest, in ascending order
      }
      select_.end_pass();
      if (select_.wants_pass()) return;
      threshold_ = select_.value(0);
      equal_left_ = keep_ - (numel_ - select_.below(0) - select_.equal(0));
      stage_ = Stage::ties_and_energy;
    } else {  // ties and energy, or energy alone: the tasks' weights
      std::vector<double> squares;
      for (const auto& lanes : lanes_) squares.push_back(kernels::lanes_total(lanes.data(), stat_blocks(numel_)));
      weights_ = energy_weights(squares, numel_);
      stage_ = Stage::done;
    }
  }
  void produce(TensorInputs& in, std::span<float> out, int threads) override {
    const i64 n = static_cast<i64>(in.n), count = static_cast<i64>(in.count);
    float* x = in.stacked.data();
    var_.resize(in.count);
    keep_bytes_.resize(in.count);
    double* var = var_.data();
    unsigned char* keep = keep_bytes_.data();
    by_blocks(in.first, count, threads, [&](i64 j0, i64 j1) {
      element_variances(x, n, count, j0, j1, var + j0);
      keep_mask(var + j0, j1 - j0, equal_[static_cast<std::size_t>((in.first + j0) / kBlock)], keep + j0);
      for (i64 t = 0; t < n; ++t) {
        float* xt = x + t * count;
        for (i64 j = j0; j < j1; ++j) xt[j] = keep[j] ? xt[j] : 0.0f;
      }
    });
    combine_tasks(recipe_, x, n, count, weights_.data(), out, threads, has_base_ ? in.base.data() : nullptr);
  }

 private:
  enum class Stage { select, ties_and_energy, energy, done };

  // f(j0, j1) over the piece's elements [j0, j1), cut at the blocks (for_blocks): a block's
  // ties are walked in index order by one thread, and a block holds whole statistics blocks.
  template <class F>
  static void by_blocks(i64 first, i64 count, int threads, const F& f) {
    for_blocks(first, count, kBlock, threads, [&](i64, i64 b, i64 e) { f(b - first, e - first); });
  }

  // Whether each of m elements of one block (variances `var`, or none where every element is
  // kept or none is) is kept, into keep: those above the threshold, and of those at it as many
  // as the block's allowance `left` holds, lower index first (it is spent). The comparisons in
  // one loop on vector lanes, then the ties in index order only where the allowance is not
  // spent: most blocks have none to keep.
  void keep_mask(const double* var, i64 m, i64& left, unsigned char* keep) const {
    const bool all = topk_ >= 1 || keep_ >= numel_;
    if (all || keep_ <= 0) {
      std::fill_n(keep, m, static_cast<unsigned char>(all));
      return;
    }
    const double threshold = threshold_;
    for (i64 j = 0; j < m; ++j) keep[j] = var[j] > threshold;
    for (i64 j = 0; j < m && left > 0; ++j)
      if (var[j] == threshold) keep[j] = 1, --left;
  }

  // Each task's sum of squares over the piece's kept elements, into the statistics lanes:
  // left_of(j) is the allowance of the block holding the piece's element j; with `variances`
  // the piece's are in var_, else none is needed (every element kept, or none).
  template <class LeftOf>
  void add_kept_squares(const TensorInputs& in, int threads, const LeftOf& left_of, bool variances) {
    const i64 n = static_cast<i64>(in.n), count = static_cast<i64>(in.count);
    const float* x = in.stacked.data();
    const double* var = var_.data();
    keep_bytes_.resize(in.count);
    unsigned char* keep = keep_bytes_.data();
    by_blocks(in.first, count, threads, [&](i64 j0, i64 j1) {
      keep_mask(variances ? var + j0 : nullptr, j1 - j0, left_of(j0), keep + j0);
      for (i64 t = 0; t < n; ++t)
        add_square_lanes(lanes_[t].data(), in.first + j0, x + t * count + j0, j1 - j0, keep + j0);
    });
  }

  CombineRecipe recipe_;
  double topk_;
  i64 numel_;
  bool has_base_;
  Stage stage_;
  bool first_pass_ = true;
  i64 nonzero_ = 0, keep_ = 0, equal_left_ = 0, ties_before_ = 0;
  double threshold_ = 0;
  RankSelect select_;
  std::vector<double> var_, weights_;
  std::vector<unsigned char> keep_bytes_;  // the energy pass's decisions over a piece
  std::vector<std::vector<double>> lanes_;  // per task: Σ x² of the kept elements, per block and lane
  std::vector<i64> equal_;      // per block: the ties at the threshold it keeps (filled by the ties pass)
  std::vector<i64> part_left_;  // the ties pass: the allowance of each block (part) of its piece
};

}  // namespace

std::unique_ptr<PieceMerger> sce_merger(const ClassicMergeOptions& o, const std::vector<i64>& shape,
                                        std::size_t n, bool has_base) {
  i64 numel = 1;
  for (const auto d : shape) numel *= d;
  return std::make_unique<ScePieces>(o, numel, n, has_base);
}

}  // namespace revmerge
