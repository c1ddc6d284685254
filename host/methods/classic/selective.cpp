// mergekit's methods that keep or drop each change by a mask computed from the data, on full
// models, each floating-point tensor on its own (δᵢ = Wᵢ − W_base):
//  - ram (Reinforced Agent Merging): an element counts for task i where |δᵢ| > ε; an element
//    changed by one task alone takes that task's value, one changed by c > 1 tasks the mean of
//    their values, one changed by none stays the base's;
//  - ramplus_tl: the same, with each task's unique changes scaled by 1 + r · min(α, ρᵢ), where
//    ρᵢ = (its elements shared with other tasks) / max(its unique elements, ε) in this tensor;
//  - arcee_fusion (the base and one fine-tune): importance = |δ| · KL(softmax(W) ‖ softmax(W_base))
//    along each row (the last axis), and the change is kept where the importance reaches
//    median + 1.5 · (q₃ − q₁) of the tensor's importances (quantiles at ⌊q · (N − 1)⌋ of the
//    sorted values — all of them: mergekit samples 10⁶ with replacement above that size).
// mergekit computes in the tensors' dtype; revmerge in f64, rounded once, arcee_fusion's exp and
// log by kernels/exp_log.hpp (the same bits on a GPU: kernels::fusion_row_kl).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "methods/classic/lanes8.hpp"
#include "methods/classic/piece_merge.hpp"
#include "methods/classic/rank_select.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

}  // namespace

RamParameters ram_parameters(const ClassicMergeOptions& o, const std::string& tensor) {
  const std::string where = tensor.empty() ? std::string() : " (tensor '" + tensor + "')";
  RamParameters rp;
  rp.plus = o.method == ClassicMethod::ramplus_tl;
  if (!o.epsilons.empty()) {
    const auto p = task_parameters(o, o.tasks.size());
    if (std::any_of(p.epsilons.begin(), p.epsilons.end(), [&](double e) { return e != p.epsilons[0]; }))
      throw usage_error("--epsilon: --method " + to_string(o.method) + " takes one epsilon for all tasks" + where);
    rp.epsilon = p.epsilons[0];
  }
  rp.r = o.ram_r.value_or(rp.r);
  rp.alpha = o.ram_alpha.value_or(rp.alpha);
  if (!(rp.epsilon >= 0) || !std::isfinite(rp.r) || !(rp.alpha >= 0))
    throw usage_error("--epsilon, --ram-r, --ram-alpha: epsilon and alpha must be 0 or above, r finite" + where);
  return rp;
}

double ram_scale(const RamParameters& p, double shared, double unique) {
  return 1 + p.r * std::clamp(shared / std::max(unique, p.epsilon), 0.0, p.alpha);
}

std::vector<i64> fusion_ranks(i64 numel) {
  const auto at = [numel](double q) { return static_cast<i64>(q * static_cast<double>(numel - 1)); };
  return {at(0.25), at(0.5), at(0.75)};
}

double fusion_threshold(double q1, double median, double q3) { return median + 1.5 * (q3 - q1); }

namespace {

void ram(const TensorInputs& in, const RamParameters& p, std::span<float> out) {
  const auto& base = in.base;
  const std::size_t n = in.n, m = base.size();
  const auto x = [&](std::size_t i, std::size_t k) { return double(in.model(i)[k]); };
  const auto changed = [&](std::size_t i, std::size_t k) {
    return std::fabs(x(i, k) - base[k]) > p.epsilon;
  };
  std::vector<int> count(m, 0);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t k = 0; k < m; ++k) count[k] += changed(i, k);
  std::vector<double> scale(n, 1.0);
  if (p.plus)
    for (std::size_t i = 0; i < n; ++i) {
      double shared = 0, unique = 0;
      for (std::size_t k = 0; k < m; ++k)
        if (changed(i, k)) (count[k] > 1 ? shared : unique) += 1;
      scale[i] = ram_scale(p, shared, unique);
    }
  for (std::size_t k = 0; k < m; ++k) {
    double sum = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (changed(i, k)) sum += (x(i, k) - base[k]) * (count[k] == 1 ? scale[i] : 1.0);
    out[k] = static_cast<float>(base[k] + (count[k] > 1 ? sum / count[k] : sum));
  }
}

// kernels::fusion_row_kl on the host: a row's exps and terms kept in `scratch` (2 · row doubles)
// so that their loops vectorize, and its maxima and lanes' sums written as vectors (the compiler
// had left those loops scalar: a quarter of the routine's time). The same
// operations in the same order, so the same bits: each lane still adds its elements in index
// order, and a row's maximum is the same value whichever order finds it (but for a zero's sign,
// and exp(x − 0) and exp(x + 0) are the same). Where the row's values span at most 708 (every
// row of a trained model), its exps take arguments in [−708, 0] and its logs positive normal
// ratios, so exp_f64_normal and log_f64_normal give their bits with about half the work.
[[gnu::always_inline]] inline double fusion_row_kl_vectors(const float* w, const float* b, i64 row, double* scratch) {
  constexpr i64 L = kernels::kStatLanes;
  using Ints = int __attribute__((vector_size(L * sizeof(int))));
  const i64 whole = row - row % L;
  float top_w = w[0], top_b = b[0], low_w = w[0], low_b = b[0];
  bool ordered = true;  // no NaN (a NaN is never a maximum or minimum)
  if (whole > 0) {
    Floats mw, mb, nw, nb;
    std::memcpy(&mw, w, sizeof mw);
    std::memcpy(&mb, b, sizeof mb);
    nw = mw, nb = mb;
    Ints equal = (mw == mw) & (mb == mb);
    for (i64 j = L; j < whole; j += L) {
      Floats x, y;
      std::memcpy(&x, w + j, sizeof x);
      std::memcpy(&y, b + j, sizeof y);
      mw = x > mw ? x : mw;
      mb = y > mb ? y : mb;
      nw = x < nw ? x : nw;
      nb = y < nb ? y : nb;
      equal &= (x == x) & (y == y);
    }
    for (i64 l = 0; l < L; ++l) {
      if (mw[l] > top_w) top_w = mw[l];
      if (mb[l] > top_b) top_b = mb[l];
      if (nw[l] < low_w) low_w = nw[l];
      if (nb[l] < low_b) low_b = nb[l];
      ordered &= equal[l] != 0;
    }
  }
  for (i64 j = whole; j < row; ++j) {
    if (w[j] > top_w) top_w = w[j];
    if (b[j] > top_b) top_b = b[j];
    if (w[j] < low_w) low_w = w[j];
    if (b[j] < low_b) low_b = b[j];
    ordered &= w[j] == w[j] && b[j] == b[j];
  }
  const bool normal =
      ordered && static_cast<double>(low_w) - top_w >= -708.0 && static_cast<double>(low_b) - top_b >= -708.0;
  if (normal)
    for (i64 j = 0; j < row; ++j) {
      scratch[j] = kernels::exp_f64_normal(static_cast<double>(w[j]) - top_w);
      scratch[row + j] = kernels::exp_f64_normal(static_cast<double>(b[j]) - top_b);
    }
  else
    for (i64 j = 0; j < row; ++j) {
      scratch[j] = kernels::exp_f64(static_cast<double>(w[j]) - top_w);
      scratch[row + j] = kernels::exp_f64(static_cast<double>(b[j]) - top_b);
    }
  // Lanes l of sums[] hold elements l, l + L, … of v (whole groups as vectors, then the rest).
  const auto lane_sums = [&](const double* v, double* sums) {
    Lanes t = {};
    for (i64 j = 0; j < whole; j += L) {
      Lanes x;
      std::memcpy(&x, v + j, sizeof x);
      t += x;
    }
    std::memcpy(sums, &t, sizeof t);
    for (i64 j = whole; j < row; ++j) sums[j - whole] += v[j];
  };
  double sum_w[L], sum_b[L], kl[L];
  lane_sums(scratch, sum_w);
  lane_sums(scratch + row, sum_b);
  const double inv_w = 1.0 / kernels::block_lanes_sum(sum_w), inv_b = 1.0 / kernels::block_lanes_sum(sum_b);
  // Both probabilities lie in [1e-8, 1 + 1e-8] (each exp in [0, 1], the largest 1, so each sum
  // at least 1): their ratio is a positive normal double.
  if (normal)
    for (i64 j = 0; j < row; ++j) scratch[j] = kernels::fusion_term_normal(scratch[j], scratch[row + j], inv_w, inv_b);
  else
    for (i64 j = 0; j < row; ++j) scratch[j] = kernels::fusion_term(scratch[j], scratch[row + j], inv_w, inv_b);
  lane_sums(scratch, kl);
  return kernels::block_lanes_sum(kl);
}

}  // namespace

// Each row's divergence for `rows` rows of `row` elements of w and b, into kl, on the calling
// thread (its scratch kept from call to call). Compiled again for AVX2 and AVX-512 where the CPU
// has them: the exps and logs in vectors, the same IEEE operations (no contraction in this
// file), so the same bits on every machine.
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void fusion_rows_into(const float* w, const float* b, i64 row, i64 rows, double* kl) {
  thread_local std::vector<double> scratch;
  if (scratch.size() < static_cast<std::size_t>(2 * row)) scratch.resize(static_cast<std::size_t>(2 * row));
  for (i64 r = 0; r < rows; ++r) kl[r] = fusion_row_kl_vectors(w + r * row, b + r * row, row, scratch.data());
}

// Each row's divergence (a 1-D tensor is one row) for rows [0, count / row) of w and b, the rows
// shared among the threads.
std::vector<double> fusion_rows(std::span<const float> w, std::span<const float> b, i64 row, int threads) {
  const i64 rows = static_cast<i64>(w.size()) / row;
  std::vector<double> kl(static_cast<std::size_t>(rows));
#pragma omp parallel num_threads(threads > 0 ? threads : omp_get_max_threads()) if (rows > 1)
  {
    const i64 t = omp_get_thread_num(), parts = omp_get_num_threads();
    const i64 from = rows * t / parts, to = rows * (t + 1) / parts;
    fusion_rows_into(w.data() + from * row, b.data() + from * row, row, to - from, kl.data() + from);
  }
  return kl;
}

namespace {

// Importances [from, from + count) of a piece whose rows of `row` elements have the divergences
// kl (the piece's first row first), into out.
void fusion_importances(const float* w, const float* b, const double* kl, i64 row, i64 from, i64 count,
                        double* out) {
  for (i64 k = from; k < from + count;) {  // row by row
    const i64 r = k / row, end = std::min(from + count, (r + 1) * row);
    for (; k < end; ++k) out[k - from] = kernels::fusion_importance(w[k], b[k], kl[r]);
  }
}

double quartile_threshold(std::vector<double> v) {
  const auto at = [&](std::int64_t rank) {
    auto k = v.begin() + static_cast<std::ptrdiff_t>(rank);
    std::nth_element(v.begin(), k, v.end());
    return *k;
  };
  const auto ranks = fusion_ranks(static_cast<i64>(v.size()));
  return fusion_threshold(at(ranks[0]), at(ranks[1]), at(ranks[2]));
}

}  // namespace

bool is_selective(ClassicMethod method) {
  return method == ClassicMethod::ram || method == ClassicMethod::ramplus_tl ||
         method == ClassicMethod::arcee_fusion;
}

void check_selective_options(const ClassicMergeOptions& o) {
  const std::string method = "--method " + to_string(o.method);
  if (o.method == ClassicMethod::arcee_fusion && o.tasks.size() != 1)
    throw usage_error(method + " fuses the base and one fine-tune; got " +
                      std::to_string(o.tasks.size()) + " models besides the base");
  refuse_weighting_options(o);
  if (!is_set_per_tensor(o, "epsilon")) ram_parameters(o, "");
}

void selective_tensor(const ClassicMergeOptions& o, const TensorInputs& in, std::span<float> out, int threads) {
  const auto& b = in.base;
  if (o.method != ClassicMethod::arcee_fusion) {
    ram(in, ram_parameters(o, in.name), out);
    return;
  }
  if (b.empty()) return;
  const i64 row = std::max<i64>(in.shape.empty() ? 1 : in.shape.back(), 1);
  const auto w = in.model(0);
  std::vector<double> importance(w.size());
  fusion_importances(w.data(), b.data(), fusion_rows(w, b, row, threads).data(), row, 0,
                     static_cast<i64>(w.size()), importance.data());
  const double threshold = quartile_threshold(importance);
  for (std::size_t k = 0; k < out.size(); ++k) out[k] = importance[k] >= threshold ? w[k] : b[k];
}

namespace {

// ram and ramplus_tl in pieces: ramplus_tl counts each task's shared and unique changes in one
// pass (exact integers, so the order of pieces does not matter), then every element is merged
// as ram() does.
class RamPieces final : public PieceMerger {
 public:
  RamPieces(RamParameters p, std::size_t n) : p_(p), shared_(n, 0.0), unique_(n, 0.0), scale_(n, 1.0) {}
  bool wants_pass() const override { return p_.plus && !counted_; }
  void observe(const TensorInputs& in, int threads) override {
    const auto count = static_cast<std::int64_t>(in.count);
#pragma omp parallel num_threads(count > kParallelFrom ? threads : 1)
    {  // each thread's counts, then added: integers, exact in any order
      std::vector<double> shared(in.n, 0.0), unique(in.n, 0.0);
#pragma omp for schedule(static)
      for (std::int64_t k = 0; k < count; ++k) {
        const int c = changes(in, static_cast<std::size_t>(k));
        for (std::size_t i = 0; i < in.n; ++i)
          if (changed(in, i, static_cast<std::size_t>(k))) (c > 1 ? shared : unique)[i] += 1;
      }
#pragma omp critical(ram_counts)
      for (std::size_t i = 0; i < in.n; ++i) {
        shared_[i] += shared[i];
        unique_[i] += unique[i];
      }
    }
  }
  void end_pass() override {
    for (std::size_t i = 0; i < scale_.size(); ++i)
      scale_[i] = ram_scale(p_, shared_[i], unique_[i]);
    counted_ = true;
  }
  void produce(TensorInputs& in, std::span<float> out, int threads) override {
    const auto count = static_cast<std::int64_t>(in.count);
#pragma omp parallel for num_threads(count > kParallelFrom ? threads : 1) schedule(static)
    for (std::int64_t j = 0; j < count; ++j) {
      const auto k = static_cast<std::size_t>(j);
      const int c = changes(in, k);
      double sum = 0;
      for (std::size_t i = 0; i < in.n; ++i)
        if (changed(in, i, k)) sum += (double(in.model(i)[k]) - in.base[k]) * (c == 1 ? scale_[i] : 1.0);
      out[k] = static_cast<float>(in.base[k] + (c > 1 ? sum / c : sum));
    }
  }

 private:
  static constexpr std::int64_t kParallelFrom = std::int64_t{1} << 14;  // below: not worth the threads
  bool changed(const TensorInputs& in, std::size_t i, std::size_t k) const {
    return std::fabs(double(in.model(i)[k]) - in.base[k]) > p_.epsilon;
  }
  int changes(const TensorInputs& in, std::size_t k) const {
    int c = 0;
    for (std::size_t i = 0; i < in.n; ++i) c += changed(in, i, k);
    return c;
  }

  RamParameters p_;
  std::vector<double> shared_, unique_, scale_;
  bool counted_ = false;
};

// arcee_fusion in pieces of whole rows, each read and merged run by run (runs of whole rows,
// each on the thread that read it while it is in cache): the rows' divergences (kept for the
// tensor, a double a row, from the first pass), the importances' quartiles by an exact selection
// — a sample in the first pass, the values inside the quartiles' brackets in the second
// (RankSelect::sample_first; radix passes where that does not fit) — the importances made a
// block at a time where they are counted, then each change kept or dropped.
class FusionPieces final : public PieceMerger {
 public:
  FusionPieces(i64 row, i64 numel)
      : row_(std::max<i64>(row, 1)), numel_(numel), kl_(static_cast<std::size_t>(numel / row_)),
        select_(fusion_ranks(numel)) {
    select_.keep_at_most(RankSelect::keep_limit(numel));
    select_.sample_first(numel, fusion_ranks(numel).size());
  }
  i64 granule() const override { return row_; }
  std::uint64_t held_bytes(int threads) const override {
    return kl_.size() * sizeof(double) + RankSelect::held_bytes(fusion_ranks(numel_).size(), numel_, threads, true);
  }
  bool wants_pass() const override { return select_.wants_pass(); }
  bool works_in_runs() const override { return true; }
  // Whole rows, as many as make about kRunAlign elements (one where a row is longer).
  i64 run_elements() const override { return row_ * std::max<i64>(kRunAlign / row_, 1); }
  void start_runs(int threads) override { select_.start_runs(threads); }
  void observe_run(const RunInputs& run) override {
    const float *w = run.model(0).data(), *b = run.base;
    const i64 first_row = run.first / row_;
    if (first_pass_) fusion_rows_into(w, b, row_, run.count / row_, kl_.data() + first_row);
    const double* kl = kl_.data() + first_row;
    select_.add_run(omp_get_thread_num(), run.first, run.count, [&](i64 first, i64 count, double* out) {
      fusion_importances(w, b, kl, row_, first, count, out);
      return std::span<const double>(out, static_cast<std::size_t>(count));
    });
  }
  void end_pass() override {
    first_pass_ = false;
    select_.end_pass();
    if (!select_.wants_pass()) threshold_ = fusion_threshold(select_.value(0), select_.value(1), select_.value(2));
  }
  void produce_run(const RunInputs& run, std::span<float> out) override {
    const float *w = run.model(0).data(), *b = run.base;
    const double* kl = kl_.data() + run.first / row_;
    for (i64 r = 0; r < run.count / row_; ++r)
      for (i64 j = r * row_; j < (r + 1) * row_; ++j)
        out[j] = kernels::fusion_importance(w[j], b[j], kl[r]) >= threshold_ ? w[j] : b[j];
  }
  void produce(TensorInputs& in, std::span<float> out, int) override { produce_run(whole_run(in), out); }

 private:
  i64 row_, numel_;
  std::vector<double> kl_;  // each row's divergence
  RankSelect select_;
  double threshold_ = 0;
  bool first_pass_ = true;  // the rows' divergences are made in the first
};

}  // namespace

std::unique_ptr<PieceMerger> selective_merger(const ClassicMergeOptions& o, const std::string& name,
                                              const std::vector<i64>& shape, std::size_t n) {
  if (o.method == ClassicMethod::arcee_fusion) {
    i64 numel = 1;
    for (const auto d : shape) numel *= d;
    return std::make_unique<FusionPieces>(shape.empty() ? 1 : shape.back(), numel);
  }
  return std::make_unique<RamPieces>(ram_parameters(o, name), n);
}

}  // namespace revmerge
