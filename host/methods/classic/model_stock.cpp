// mergekit's model_stock on full models (Model Stock, arXiv 2403.19522, as mergekit reads it):
// for each floating-point tensor, with the base w0 and N ≥ 2 fine-tunes wᵢ taken as vectors and
// their task vectors δᵢ = wᵢ − w0,
//   cos θ = the mean over pairs i < j of clamp(δᵢ·δⱼ / max(‖δᵢ‖‖δⱼ‖, 1e-6), −1, 1),
//   t = N cos θ / (1 + (N − 1) cos θ),   W = t · mean(wᵢ) + (1 − t) · w0.
// Fine-tunes that agree (cos θ → 1) give t → 1, the average; orthogonal ones give t = 0, the
// base; where 1 + (N − 1) cos θ is within 1e-6 of 0 the base is kept (mergekit 0.1.5). With
// filter_wise, each vector along the last axis (each row of a matrix) gets its own angle.
// mergekit computes in the tensors' dtype; revmerge in f64, rounded once. The sums over the
// tensor are kept per block and lane (StockSums), so a backend gives the same bits.
#include <algorithm>
#include <cmath>

#include "kernels/elementwise.hpp"
#include "methods/classic/lanes8.hpp"
#include "methods/classic/piece_merge.hpp"
#include "revmerge/error.hpp"

namespace revmerge {

void check_model_stock_options(const ClassicMergeOptions& o) {
  if (o.tasks.size() < 2)
    throw usage_error("--method model_stock needs at least 2 fine-tunes besides the base; got " +
                      std::to_string(o.tasks.size()));
  refuse_weighting_options(o);
}

namespace {

using i64 = std::int64_t;

// The lanes' block: kStatBlock for up to 8 sums (3 fine-tunes: 6), larger with more sums, so
// that the lanes take at most about 1/8 byte per element of the tensor (64 fine-tunes: 2080 sums).
i64 stock_block(int n) {
  return kernels::kStatBlock * std::max<i64>(1, (kernels::stock_sums(n) + 7) / 8);
}

}  // namespace

StockSums::StockSums(i64 count, std::size_t n)
    : n_(static_cast<int>(n)), block_(stock_block(n_)), blocks_((count + block_ - 1) / block_),
      lanes_(static_cast<std::size_t>(kernels::stock_sums(n_) * blocks_ * kernels::kStatLanes), 0.0) {}

kernels::ElementwiseStep StockSums::step(i64 first, i64 count, float* base, float* models, double* lanes) const {
  kernels::ElementwiseStep st;
  st.kind = kernels::ElementwiseKind::stock_lanes;
  st.first = first;
  st.count = count;
  st.n = n_;
  st.base = base;
  st.x = models;
  st.stock = lanes;
  st.stock_block = block_;
  st.stock_stride = blocks_ * kernels::kStatLanes;
  return st;
}

double StockSums::t() const {
  const i64 stride = blocks_ * kernels::kStatLanes;
  // Each sum's lanes: a block's in a fixed tree, the blocks in order.
  const auto total = [&](int q) {
    double s = 0;
    for (i64 c = 0; c < blocks_; ++c) s += kernels::block_lanes_sum(lanes_.data() + q * stride + c * kernels::kStatLanes);
    return s;
  };
  std::vector<double> sq(static_cast<std::size_t>(n_));
  for (int a = 0; a < n_; ++a) sq[a] = total(a);
  double cos_sum = 0;
  for (int q = n_; q < kernels::stock_sums(n_); ++q) {
    int a, b;
    kernels::stock_pair(n_, q, a, b);
    cos_sum += kernels::stock_cosine(total(q), sq[a], sq[b]);
  }
  return kernels::stock_t(cos_sum, n_);
}

kernels::ElementwiseStep stock_step(kernels::ElementwiseKind kind, int n, i64 count, float* base, float* models,
                                    double t, i64 row, double* row_t, float* out) {
  kernels::ElementwiseStep st;
  st.kind = kind;
  st.count = count;
  st.n = n;
  st.base = base;
  st.x = models;
  st.t = t;
  st.row = row;
  st.row_t = row_t;
  st.out = out;
  return st;
}

namespace {

// W = w0 + t · mean(δ) over m elements (the base's at w0, task i's at x[i]) into out on this
// thread, eight at a time: each element's operations in stock_blend's order. Compiled per
// instruction set.
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void stock_blend_run(int n, double t, const float* w0, const float* const* x, i64 m, float* out) {
  constexpr i64 L = kernels::kStatLanes;
  const double nd = n;
  i64 j = 0;
  for (; j + L <= m; j += L) {
    Lanes b, mean = {};
    widen8(b, w0 + j);
    for (int i = 0; i < n; ++i) {
      Lanes v;
      widen8(v, x[i] + j);
      mean += v - b;
    }
    narrow8(out + j, b + t * (mean / nd));
  }
  for (; j < m; ++j) {
    double mean = 0;
    for (int i = 0; i < n; ++i) mean += double(x[i][j]) - double(w0[j]);
    out[j] = static_cast<float>(double(w0[j]) + t * (mean / nd));
  }
}

// One angle for the whole tensor (a pass over its pieces first), or with filter_wise one per
// row (pieces of whole rows). The steps are kernels/elementwise.hpp's, the ones a backend runs;
// one angle's pass and blend go run by run as the driver reads them where the runs hold whole
// blocks of its lanes (gram_lanes_run, stock_blend_run: the steps' bits).
class ModelStockPieces final : public PieceMerger {
 public:
  ModelStockPieces(std::size_t n, i64 numel, i64 row) : sums_(row == 0 ? numel : 0, n), n_(static_cast<int>(n)), row_(row) {}
  i64 granule() const override { return std::max<i64>(row_, 1); }
  bool wants_pass() const override { return row_ == 0 && !summed_; }
  std::uint64_t held_bytes(int) const override { return sums_.lane_count() * sizeof(double); }
  bool works_in_runs() const override { return row_ == 0 && kRunAlign % stock_block(n_) == 0; }
  void observe_run(const RunInputs& run) override {
    const auto x = tasks(run);
    gram_lanes_run(sums_.lanes().data(), sums_.stride(), n_, run.first, x.data(), run.base, run.count,
                   stock_block(n_));
  }
  void produce_run(const RunInputs& run, std::span<float> out) override {
    const auto x = tasks(run);
    stock_blend_run(n_, t_, run.base, x.data(), run.count, out.data());
  }
  void observe(const TensorInputs& in, int threads) override {
    run_host_step(sums_.step(in.first, static_cast<i64>(in.count), const_cast<float*>(in.base.data()),
                        const_cast<float*>(in.stacked.data()), sums_.lanes().data()),
             threads);
  }
  void end_pass() override {
    summed_ = true;
    if (row_ == 0) t_ = sums_.t();
  }
  void produce(TensorInputs& in, std::span<float> out, int threads) override {
    const auto count = static_cast<i64>(in.count);
    using kernels::ElementwiseKind;
    if (row_ == 0)
      return run_host_step(stock_step(ElementwiseKind::stock_blend, n_, count, in.base.data(), in.stacked.data(), t_,
                                 0, nullptr, out.data()),
                      threads);
    row_t_.resize(static_cast<std::size_t>(count / row_));
    for (const auto kind : {ElementwiseKind::stock_rows, ElementwiseKind::stock_blend})
      run_host_step(stock_step(kind, n_, count, in.base.data(), in.stacked.data(), 0, row_, row_t_.data(), out.data()),
               threads);
  }

 private:
  static std::vector<const float*> tasks(const RunInputs& run) {
    std::vector<const float*> x;
    for (std::size_t t = 0; t < run.n; ++t) x.push_back(run.tasks + t * static_cast<std::size_t>(run.stride));
    return x;
  }
  StockSums sums_;
  int n_;
  i64 row_;  // 0: one angle for the tensor
  bool summed_ = false;
  double t_ = 0;  // the tensor's, once summed
  std::vector<double> row_t_;
};

}  // namespace

std::unique_ptr<PieceMerger> model_stock_merger(const ClassicMergeOptions& o, const std::vector<std::int64_t>& shape,
                                                std::size_t n) {
  const bool rows = o.filter_wise.value_or(false) && !shape.empty();
  i64 numel = 1;
  for (const auto d : shape) numel *= d;
  return std::make_unique<ModelStockPieces>(n, numel, rows ? shape.back() : 0);
}

}  // namespace revmerge
