// mergekit's model_stock on full models (Model Stock, arXiv 2403.19522, as mergekit reads it):
// for each floating-point tensor, with the base w0 and N ≥ 2 fine-tunes wᵢ taken as vectors and
// their task vectors δᵢ = wᵢ − w0,
//   cos θ = the mean over pairs i < j of clamp(δᵢ·δⱼ / max(‖δᵢ‖‖δⱼ‖, 1e-6), −1, 1),
//   t = N cos θ / (1 + (N − 1) cos θ),   W = t · mean(wᵢ) + (1 − t) · w0.
// Fine-tunes that agree (cos θ → 1) give t → 1, the average; orthogonal ones give t = 0, the
// base; where 1 + (N − 1) cos θ is within 1e-6 of 0 the base is kept (mergekit 0.1.5). With
// filter_wise, each vector along the last axis (each row of a matrix) gets its own angle.
// mergekit computes in the tensors' dtype; revmerge in f64, rounded once.
#include <algorithm>
#include <cmath>

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

// The angle's sums over one vector (the tensor, or a row): each task vector's squared norm and
// every pair's dot product, in f64, added in index order (piece after piece).
struct AngleSums {
  std::size_t n = 0;
  std::vector<double> sq, dot;  // dot: pairs i < j in order
  std::vector<double> delta;    // one element's task vectors (scratch)

  explicit AngleSums(std::size_t tasks) : n(tasks), sq(tasks, 0.0), dot(tasks * (tasks - 1) / 2, 0.0), delta(tasks) {}
  void clear() {
    std::fill(sq.begin(), sq.end(), 0.0);
    std::fill(dot.begin(), dot.end(), 0.0);
  }
  void add(const TensorInputs& in, std::size_t from, std::size_t to) {
    for (std::size_t k = from; k < to; ++k) {
      for (std::size_t i = 0; i < n; ++i) {
        delta[i] = double(in.model(i)[k]) - in.base[k];
        sq[i] += delta[i] * delta[i];
      }
      std::size_t p = 0;
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = i + 1; j < n; ++j) dot[p++] += delta[i] * delta[j];
    }
  }
  // t of W = w0 + t · mean(δ).
  double t() const {
    double cos_sum = 0;
    std::size_t p = 0;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j)
        cos_sum += std::clamp(dot[p++] / std::max(std::sqrt(sq[i]) * std::sqrt(sq[j]), 1e-6), -1.0, 1.0);
    const double nd = double(n);
    const double cos = cos_sum / double(n * (n - 1) / 2);
    const double denominator = 1 + (nd - 1) * cos;
    // Where the denominator vanishes there is no finite estimate: mergekit keeps the base there.
    return std::fabs(denominator) < 1e-6 ? 0.0 : nd * cos / denominator;
  }
};

void move_toward_mean(const TensorInputs& in, double t, std::size_t from, std::size_t to, std::span<float> out) {
  const double nd = double(in.n);
  for (std::size_t k = from; k < to; ++k) {
    double mean = 0;
    for (std::size_t i = 0; i < in.n; ++i) mean += double(in.model(i)[k]) - in.base[k];
    out[k] = static_cast<float>(in.base[k] + t * (mean / nd));
  }
}

// One angle for the whole tensor (a pass over its pieces first), or with filter_wise one per
// row (pieces of whole rows).
class ModelStockPieces final : public PieceMerger {
 public:
  ModelStockPieces(std::size_t n, std::int64_t row) : sums_(n), row_(row) {}
  std::int64_t granule() const override { return std::max<std::int64_t>(row_, 1); }
  bool wants_pass() const override { return row_ == 0 && !summed_; }
  void observe(const TensorInputs& in, int) override { sums_.add(in, 0, in.count); }
  void end_pass() override { summed_ = true; }
  void produce(TensorInputs& in, std::span<float> out, int) override {
    if (row_ == 0) return move_toward_mean(in, sums_.t(), 0, in.count, out);
    const auto length = static_cast<std::size_t>(row_);
    for (std::size_t at = 0; at < in.count; at += length) {
      sums_.clear();
      sums_.add(in, at, at + length);
      move_toward_mean(in, sums_.t(), at, at + length, out);
    }
  }

 private:
  AngleSums sums_;
  std::int64_t row_;  // 0: one angle for the tensor
  bool summed_ = false;
};

}  // namespace

std::unique_ptr<PieceMerger> model_stock_merger(const ClassicMergeOptions& o, const std::vector<std::int64_t>& shape,
                                                std::size_t n) {
  const bool rows = o.filter_wise.value_or(false) && !shape.empty();
  return std::make_unique<ModelStockPieces>(n, rows ? shape.back() : 0);
}

}  // namespace revmerge
