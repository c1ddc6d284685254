// Each task's thinning before the tasks are combined: TIES' magnitude trim, DARE's random
// drop, breadcrumbs' outlier trim and DELLA's magnitude-ranked drop, with the rescaling that
// follows them (thinning.hpp: in passes over pieces of the tensor). Every ranking by magnitude
// is total: equal magnitudes are ordered by index, the lower index counting as the larger
// (mergekit leaves that order to torch's sort, which does not specify it; PEFT's topk likewise).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

#include "kernels/counter_rng.hpp"
#include "kernels/elementwise.hpp"
#include "methods/classic/magnitude_order.hpp"
#include "methods/classic/thinning.hpp"
#include "methods/classic/thinning_loops.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;
using kernels::kept_or_zero;
using kernels::magnitude_bits;
using thinning_loops::add_abs;
using thinning_loops::add_drawn_norms;
using thinning_loops::add_histogram;
using thinning_loops::add_kept_norms;
using thinning_loops::block_count;
using thinning_loops::count_bits;
using thinning_loops::draw_keeps;
using thinning_loops::draw_keeps_each;
using thinning_loops::drop_drawn;
using thinning_loops::for_blocks;
using thinning_loops::in_lanes;
using thinning_loops::kBlock;
using thinning_loops::kDraws;
using thinning_loops::kept_or_zero;
using thinning_loops::kLanes;
using thinning_loops::total;
using thinning_loops::trim_run;
using thinning_loops::TrimRule;

constexpr i64 kEveryone = std::numeric_limits<i64>::max();

}  // namespace

std::vector<i64> tie_allowances(const std::vector<i64>& equal, i64 equal_left) {
  std::vector<i64> left(equal.size());
  i64 before = 0;
  for (std::size_t c = 0; c < equal.size(); ++c) {
    left[c] = std::clamp<i64>(equal_left - before, 0, equal[c]);
    before += equal[c];
  }
  return left;
}

Thinning::Thinning(const ThinningSpec& spec, i64 count) : spec_(spec), count_(count) {
  const double d = spec.density;
  if (spec.kind == Sparsify::none || d >= 1 || count == 0) return;
  active_ = true;
  granule_ = 1;
  const i64 blocks = block_count(count);
  const bool l1 = spec.rescale == Rescale::l1;
  if (spec.rescale == Rescale::inverse_density) factor_ = 1.0 / d;
  const auto rule = [&](i64 k) {
    Rule r;
    r.k = k;
    r.trivial = k <= 0 || k >= count;
    if (r.trivial) r.left.assign(static_cast<std::size_t>(blocks), k > 0 ? kEveryone : 0);
    else {
      r.low.assign(65536, 0);
      r.equal.assign(static_cast<std::size_t>(blocks), 0);
      if (l1) r.above_sum.assign(static_cast<std::size_t>(blocks * kLanes), 0.0);
    }
    return r;
  };
  switch (spec.kind) {
    case Sparsify::none: break;
    case Sparsify::magnitude: {
      // ⌊density · count⌋ as Python's int() computes it.
      i64 k = d <= 0 ? 0 : static_cast<i64>(d * static_cast<double>(count));
      if (spec.keep_at_least_one && d > 0) k = std::max<i64>(k, 1);
      rules_.push_back(rule(k));
      break;
    }
    case Sparsify::outliers: {
      const i64 target = d <= 0 ? 0 : static_cast<i64>(d * static_cast<double>(count));
      const i64 top = static_cast<i64>(spec.gamma * static_cast<double>(count));
      // mergekit: n_bot = max(0, N − target − n_top) dropped from the bottom, `target` kept
      // above them; in ranks from the top that is [N − n_bot − target, N − n_bot).
      const i64 bottom = std::max<i64>(0, count - target - top);
      rules_.push_back(rule(count - bottom));
      rules_.push_back(rule(count - bottom - target));
      break;
    }
    case Sparsify::random:
    case Sparsify::della:
      if (d <= 0) {
        zero_all_ = true;
        return;
      }
      if (spec.kind == Sparsify::della) {
        // Rows along the second axis, as mergekit ranks (dim 1; a 1-D tensor is one row): a
        // piece holds whole groups of (row length × the inner axes).
        const auto& shape = spec.shape;
        granule_ = shape.size() >= 2 ? std::accumulate(shape.begin() + 1, shape.end(), i64{1}, std::multiplies<>())
                                     : count;
      }
      if (l1) {
        stages_ = {Stage::norms};
        before_.assign(static_cast<std::size_t>(blocks * kLanes), 0.0);
        after_.assign(static_cast<std::size_t>(blocks * kLanes), 0.0);
      }
      return;
  }
  const bool selects = std::any_of(rules_.begin(), rules_.end(), [](const Rule& r) { return !r.trivial; });
  if (selects) {
    stages_ = {Stage::high_bits, Stage::low_bits, Stage::equal_counts};
    high_.assign(65536, 0);
  } else if (l1) {
    stages_ = {Stage::norms};
  }
  if (l1) before_.assign(static_cast<std::size_t>(blocks * kLanes), 0.0);
}

std::uint64_t Thinning::held_bytes(int threads) const {
  const auto bytes = [](const auto& v) { return static_cast<std::uint64_t>(v.size() * sizeof(v[0])); };
  const auto blocks = static_cast<std::uint64_t>(block_count(count_));
  std::uint64_t held = bytes(high_) + bytes(before_) + bytes(after_), selecting = 0;
  for (const auto& r : rules_) {
    held += bytes(r.low) + bytes(r.equal) + bytes(r.above_sum) + blocks * 8;  // `left` once decided
    selecting += r.trivial ? 0 : 1;
  }
  if (!stages_.empty() && works_in_runs()) {  // start_runs: each slot's histograms, the ties kept
    held += static_cast<std::uint64_t>(std::max(threads, 1)) * std::max<std::uint64_t>(selecting, 1) * 65536 * 8;
    if (spec_.rescale != Rescale::l1) held += selecting * static_cast<std::uint64_t>(std::min(kTiesKept, count_)) * 8;
  }
  if (!after_.empty()) held += static_cast<std::uint64_t>((count_ + 63) / 64) * 8;  // kept_ of a whole tensor
  return held;
}

double Thinning::Rule::kept_l1() const {
  if (trivial) return 0;  // the caller counts a rule that keeps everything
  return total(above_sum) + static_cast<double>(equal_left) * std::bit_cast<float>(threshold);
}

// DELLA's decisions for a piece, a byte per element, in memory kept from piece to piece and
// tensor to tensor: fresh memory for each was a fault and a zeroed page per 4 KiB (2 GB of them
// merging the 7b set, 16 % of the time). At most the largest piece's elements, which the plan's
// budget already holds for each piece.
namespace {
std::vector<unsigned char>& della_scratch() {
  thread_local std::vector<unsigned char> keep;
  return keep;
}
}  // namespace

void Thinning::della_keep(i64 first, std::span<const float> x, std::vector<unsigned char>& keep,
                          int threads) const {
  const auto& shape = spec_.shape;
  const i64 count = static_cast<i64>(x.size());
  const i64 length = shape.size() >= 2 ? shape[1] : count_;
  const i64 inner = granule_ / std::max<i64>(length, 1);
  if (length == 0 || inner == 0) return;
  keep.resize(x.size());
  const kernels::CounterThreshold draw(spec_.seed, spec_.stream);
  const i64 outer = count / (length * inner);
  // Every row has the same length: the draw's limit for position p from the top (ascending
  // rank length − p) is the same in each.
  std::vector<std::uint64_t> limit_at(static_cast<std::size_t>(length));
  for (i64 p = 0; p < length; ++p)
    limit_at[p] = kernels::CounterThreshold::limit(della_probability(length - p, length, spec_.density, spec_.epsilon));
#pragma omp parallel num_threads(threads)
  {
    std::vector<i64> order(static_cast<std::size_t>(length));
    std::vector<std::uint64_t> limit(static_cast<std::size_t>(length));
    MagnitudeOrder sorter;
#pragma omp for schedule(dynamic, 16)
    for (i64 row = 0; row < outer * inner; ++row) {
      const i64 o = row / inner, in = row % inner;
      const auto at = [&](i64 j) { return (o * length + j) * inner + in; };
      sorter.sort(length, [&](i64 j) { return x[at(j)]; }, order);
      for (i64 p = 0; p < length; ++p) limit[order[p]] = limit_at[p];
      if (inner == 1) {  // a row's elements side by side: its draws as one vector loop
        draw_keeps_each(draw, limit.data(), first + at(0), length, keep.data() + at(0));
        continue;
      }
      for (i64 j = 0; j < length; ++j) {
        const i64 e = at(j);
        keep[e] = draw.below(static_cast<std::uint64_t>(first + e), limit[j]);
      }
    }
  }
}

void Thinning::observe(i64 first, std::span<const float> x, int threads) {
  observe_part(first, x, threads, -1);
}

void Thinning::observe_run(i64 first, std::span<const float> x, int slot) { observe_part(first, x, 1, slot); }

std::vector<std::vector<i64>*> Thinning::pass_histograms() {
  std::vector<std::vector<i64>*> h;
  if (stages_.at(pass_) == Stage::high_bits) h.push_back(&high_);
  if (stages_.at(pass_) == Stage::low_bits)
    for (auto& r : rules_)
      if (!r.trivial) h.push_back(&r.low);
  return h;
}

void Thinning::start_runs(int threads) {
  run_slots_ = std::max(threads, 1);
  run_histograms_ = pass_histograms().size();
  run_counts_.assign(static_cast<std::size_t>(run_slots_) * run_histograms_ * 65536, 0);
  // The low bits' pass keeps the elements at each rule's high bits, where they are few, for its
  // ties: the pass after it (the ties counted per block) is then not needed, unless it also sums
  // the magnitudes above the threshold (an L1 rescale).
  if (stages_.at(pass_) != Stage::low_bits || spec_.rescale == Rescale::l1) return;
  for (auto& r : rules_) {
    if (r.trivial) continue;
    const i64 at_hi = high_[r.hi];
    r.at_hi.assign(at_hi <= kTiesKept ? static_cast<std::size_t>(at_hi) : 0, 0);
    r.at_hi_used = 0;
  }
}

void Thinning::observe_part(i64 first, std::span<const float> x, int threads, int slot) {
  const i64 size = static_cast<i64>(x.size());
  // The run's slot's histogram h of the pass.
  const auto counts = [&](std::size_t h) {
    return run_counts_.data() + (static_cast<std::size_t>(slot) * run_histograms_ + h) * 65536;
  };
  switch (stages_.at(pass_)) {
    case Stage::high_bits:
      if (slot < 0) add_histogram(high_, x, 16, 0, threads);
      else count_bits(counts(0), x, 16, 0);
      if (!before_.empty()) add_abs(before_, first, x, threads);
      break;
    case Stage::low_bits: {
      std::size_t h = 0;
      for (auto& r : rules_) {
        if (r.trivial) continue;
        if (slot < 0) add_histogram(r.low, x, 0, r.hi, threads);
        else if (r.at_hi.empty()) count_bits(counts(h), x, 0, r.hi);
        else
          count_bits(counts(h), x.data(), size, 0, r.hi, static_cast<std::uint64_t>(first), r.at_hi.data(),
                     static_cast<i64>(r.at_hi.size()), &r.at_hi_used);
        ++h;
      }
      break;
    }
    case Stage::equal_counts:
      for (auto& r : rules_) {
        if (r.trivial) continue;
        const bool l1 = spec_.rescale == Rescale::l1;  // the sum above is an ordered chain: only when needed
        for_blocks(first, size, threads, [&](i64 c, i64 b, i64 e) {
          i64 equal = 0;
          for (i64 i = b; i < e; ++i) equal += magnitude_bits(x[i - first]) == r.threshold;
          r.equal[c] += equal;
          if (!l1) return;
          double above[kLanes];
          std::copy_n(r.above_sum.begin() + c * kLanes, kLanes, above);
          in_lanes(b, e, [&](i64 i, i64 l) {
            const float v = x[i - first];
            above[l] += kept_or_zero(magnitude_bits(v) > r.threshold, static_cast<double>(std::fabs(v)));
          });
          std::copy_n(above, kLanes, r.above_sum.begin() + c * kLanes);
        });
      }
      break;
    case Stage::norms:
      if (spec_.kind == Sparsify::random || spec_.kind == Sparsify::della) {
        // The drop's decisions (the draws, DELLA's ranking) are the costly part: for a tensor in
        // one piece they are kept, a bit each, for apply (runs draw them again).
        const bool whole = first == 0 && size == count_ && slot < 0;
        if (whole) kept_.assign(static_cast<std::size_t>((count_ + 63) / 64), 0);
        auto& della = della_scratch();
        if (spec_.kind == Sparsify::della) della_keep(first, x, della, threads);
        const kernels::CounterThreshold draw(spec_.seed, spec_.stream);
        const std::uint64_t limit = kernels::CounterThreshold::limit(spec_.density);
        const bool is_della = spec_.kind == Sparsify::della;
        for_blocks(first, size, threads, [&](i64 c, i64 b, i64 e) {
          double* const before = before_.data() + c * kLanes;
          double* const after = after_.data() + c * kLanes;
          if (!is_della && !whole) {  // no decisions kept: drawn as they are summed
            add_drawn_norms(draw, limit, x.data() + (b - first), b, e, before, after);
            return;
          }
          unsigned char drawn[kDraws];
          // The block in runs of kDraws elements (a run of a whole tensor starts on a word, as its
          // blocks do), each run's decisions drawn first, in one vectorised loop.
          for (i64 s = b; s < e; s += kDraws) {
            const i64 t = std::min(e, s + kDraws);
            const unsigned char* keeps = is_della ? della.data() + (s - first) : drawn;
            if (!is_della) draw_keeps(draw, limit, s, t - s, drawn);
            add_kept_norms(x.data() + (s - first), keeps, s, t, before, after, whole ? kept_.data() : nullptr);
          }
        });
      } else {
        add_abs(before_, first, x, threads);  // trims that keep all or nothing
      }
      break;
  }
}

bool Thinning::ties_from_kept() {
  const auto kept_all = [](const Rule& r) {
    return r.trivial || (!r.at_hi.empty() && r.at_hi_used == static_cast<i64>(r.at_hi.size()));
  };
  const bool all = std::all_of(rules_.begin(), rules_.end(), kept_all);
  for (auto& r : rules_) {
    if (r.trivial) continue;
    if (all) {  // the equal_counts pass's counts: the elements whose bits are the threshold
      const std::uint64_t low = r.threshold & 0xffffu;
      for (const auto e : r.at_hi)
        if ((e & 0xffffu) == low) ++r.equal[static_cast<std::size_t>((e >> 16) / kBlock)];
      r.left = tie_allowances(r.equal, r.equal_left);
    }
    r.at_hi = {};
  }
  return all;
}

void Thinning::end_pass() {
  if (run_slots_ > 0) {  // a pass in runs: the slots' histograms into the totals, slot by slot
    const auto totals = pass_histograms();
    for (int slot = 0; slot < run_slots_; ++slot)
      for (std::size_t h = 0; h < run_histograms_; ++h) {
        const i64* c = run_counts_.data() + (static_cast<std::size_t>(slot) * run_histograms_ + h) * 65536;
        auto& total = *totals[h];
        for (std::size_t j = 0; j < 65536; ++j) total[j] += c[j];
      }
    run_slots_ = 0;
    run_counts_ = {};
  }
  switch (stages_.at(pass_)) {
    case Stage::high_bits:
      for (auto& r : rules_) {
        if (r.trivial) continue;
        i64 above = 0;
        std::uint32_t hi = 65535;
        while (above + high_[hi] < r.k) above += high_[hi--];
        r.hi = hi;
        r.above = above;
      }
      break;
    case Stage::low_bits:
      for (auto& r : rules_) {
        if (r.trivial) continue;
        i64 above = r.above;
        std::uint32_t lo = 65535;
        while (above + r.low[lo] < r.k) above += r.low[lo--];
        r.threshold = (r.hi << 16) | lo;
        r.equal_left = r.k - above;
      }
      if (ties_from_kept()) ++pass_;  // the ties counted: no pass for them
      break;
    case Stage::equal_counts:
      for (auto& r : rules_) {
        if (r.trivial) continue;
        r.left = tie_allowances(r.equal, r.equal_left);
      }
      break;
    case Stage::norms: break;
  }
  ++pass_;
  if (wants_pass() || spec_.rescale != Rescale::l1) return;
  // Back to the task's L1 norm (mergekit's rescale: skipped when either norm is below 1e-7).
  const double before = total(before_);
  const auto kept = [&](const Rule& r) { return r.trivial ? (r.k > 0 ? before : 0.0) : r.kept_l1(); };
  double after = 0;
  if (spec_.kind == Sparsify::magnitude) after = kept(rules_[0]);
  else if (spec_.kind == Sparsify::outliers) after = kept(rules_[0]) - kept(rules_[1]);
  else after = total(after_);
  if (before >= 1e-7 && after >= 1e-7) factor_ = before / after;
}

void Thinning::apply(i64 first, std::span<float> x, int threads) {
  if (active_ && wants_pass()) throw std::logic_error("Thinning::apply before its passes");
  apply_part(first, x, threads);
  kept_ = {};
}

void Thinning::apply_run(i64 first, std::span<float> x) { apply_part(first, x, 1); }

void Thinning::apply_part(i64 first, std::span<float> x, int threads) {
  if (!active_) return;
  if (zero_all_) {
    std::fill(x.begin(), x.end(), 0.0f);
    return;
  }
  const i64 size = static_cast<i64>(x.size());
  const double factor = factor_;
  const auto scaled = [factor](float v) { return factor == 1.0 ? v : static_cast<float>(v * factor); };
  switch (spec_.kind) {
    case Sparsify::none: break;
    case Sparsify::magnitude:
    case Sparsify::outliers:
      for_blocks(first, size, threads, [&](i64 c, i64 b, i64 e) {
        Rule& outer = rules_[0];
        Rule* dropped = rules_.size() > 1 ? &rules_[1] : nullptr;
        const auto walk = [](const Rule& r) { return TrimRule{r.trivial, r.k > 0, r.threshold}; };
        const TrimRule outer_walk = walk(outer), dropped_walk = dropped ? walk(*dropped) : TrimRule{};
        i64 left = outer.left[c], left_dropped = dropped ? dropped->left[c] : 0;
        trim_run(x.data() + (b - first), e - b, outer_walk, left, dropped ? &dropped_walk : nullptr, left_dropped,
                 factor);
        outer.left[c] = left;
        if (dropped) dropped->left[c] = left_dropped;
      });
      break;
    case Sparsify::random:
    case Sparsify::della: {
      auto& della = della_scratch();
      if (kept_.empty() && spec_.kind == Sparsify::della) della_keep(first, x, della, threads);
      const kernels::CounterThreshold draw(spec_.seed, spec_.stream);
      const std::uint64_t limit = kernels::CounterThreshold::limit(spec_.density);
      // Three plain loops rather than one with a three-way choice, which the compiler may turn
      // into computing every draw.
      if (!kept_.empty()) {  // decided in the norms pass (a tensor in one piece)
        const std::uint64_t* kept = kept_.data();
#pragma omp parallel for num_threads(threads) schedule(static)
        for (i64 j = 0; j < size; ++j) {
          const auto i = static_cast<std::uint64_t>(first + j);  // unsigned: shifts, not divisions
          x[j] = kept_or_zero(((kept[i / 64] >> (i % 64)) & 1u) != 0, scaled(x[j]));
        }
      } else if (spec_.kind == Sparsify::della) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (i64 j = 0; j < size; ++j) x[j] = kept_or_zero(della[j] != 0, scaled(x[j]));
      } else {  // drawn as they are thinned; a run (one thread) opens no parallel region
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
        for (i64 s = 0; s < size; s += kDraws) drop_drawn(draw, limit, factor, x.data() + s, first + s, std::min(kDraws, size - s));
      }
      break;
    }
  }
}

void Thinning::run(std::span<float> x, int threads) {
  while (wants_pass()) {
    observe(0, x, threads);
    end_pass();
  }
  apply(0, x, threads);
}

void magnitude_trim(std::span<float> x, double density, bool keep_at_least_one, Rescale rescale,
                    int threads) {
  ThinningSpec s{Sparsify::magnitude, density, 0, 0, rescale, keep_at_least_one, 0, 0, {}};
  Thinning(s, static_cast<i64>(x.size())).run(x, threads);
}

void outlier_trim(std::span<float> x, double density, double gamma, Rescale rescale, int threads) {
  ThinningSpec s{Sparsify::outliers, density, gamma, 0, rescale, false, 0, 0, {}};
  Thinning(s, static_cast<i64>(x.size())).run(x, threads);
}

void random_drop(std::span<float> x, double density, Rescale rescale, std::uint64_t seed,
                 std::uint64_t stream, int threads) {
  ThinningSpec s{Sparsify::random, density, 0, 0, rescale, false, seed, stream, {}};
  Thinning(s, static_cast<i64>(x.size())).run(x, threads);
}

float della_probability(i64 rank, i64 length, double density, double epsilon) {
  return kernels::della_probability(rank, length, density, epsilon);  // the backends' own arithmetic
}

void della_drop(std::span<float> x, std::span<const i64> shape, double density, double epsilon,
                Rescale rescale, std::uint64_t seed, std::uint64_t stream, int threads) {
  ThinningSpec s{Sparsify::della, density, 0, epsilon, rescale, false, seed, stream,
                 std::vector<i64>(shape.begin(), shape.end())};
  Thinning(s, static_cast<i64>(x.size())).run(x, threads);
}

}  // namespace revmerge
