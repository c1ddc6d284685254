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

#include "methods/classic/classic_internal.hpp"
#include "revmerge/error.hpp"

namespace revmerge {

void check_model_stock_options(const ClassicMergeOptions& o) {
  if (o.tasks.size() < 2)
    throw usage_error("--method model_stock needs at least 2 fine-tunes besides the base; got " +
                      std::to_string(o.tasks.size()));
  refuse_weighting_options(o);
}

void model_stock_tensor(const ClassicMergeOptions& o, const TensorInputs& in, std::span<float> out) {
  const auto& w0 = in.base;
  const std::size_t n = in.n, m = w0.size();
  // One angle for the whole tensor, or (filter_wise) one per vector along the last axis.
  const bool rows = o.filter_wise.value_or(false) && !in.shape.empty();
  const std::size_t length = rows ? static_cast<std::size_t>(in.shape.back()) : m;
  if (length == 0) return;
  std::vector<std::vector<double>> deltas(n, std::vector<double>(length));
  std::vector<double> norms(n);
  const double nd = double(n);
  for (std::size_t at = 0; at < m; at += length) {
    for (std::size_t i = 0; i < n; ++i) {
      double sq = 0;
      for (std::size_t k = 0; k < length; ++k) {
        deltas[i][k] = double(in.model(i)[at + k]) - w0[at + k];
        sq += deltas[i][k] * deltas[i][k];
      }
      norms[i] = std::sqrt(sq);
    }
    double cos_sum = 0;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j) {
        double dot = 0;
        for (std::size_t k = 0; k < length; ++k) dot += deltas[i][k] * deltas[j][k];
        cos_sum += std::clamp(dot / std::max(norms[i] * norms[j], 1e-6), -1.0, 1.0);
      }
    const double cos = cos_sum / double(n * (n - 1) / 2);
    const double denominator = 1 + (nd - 1) * cos;
    // Where the denominator vanishes there is no finite estimate: mergekit keeps the base there.
    const double t = std::fabs(denominator) < 1e-6 ? 0.0 : nd * cos / denominator;
    // W = t · mean(w) + (1 − t) · w0 = w0 + t · mean(δ).
    for (std::size_t k = 0; k < length; ++k) {
      double mean = 0;
      for (std::size_t i = 0; i < n; ++i) mean += deltas[i][k];
      out[at + k] = static_cast<float>(w0[at + k] + t * (mean / nd));
    }
  }
}

}  // namespace revmerge
