// mergekit's model_stock on full models (Model Stock, arXiv 2403.19522, as mergekit reads it):
// for each floating-point tensor, with the base w0 and N ≥ 2 fine-tunes wᵢ taken as vectors and
// their task vectors δᵢ = wᵢ − w0,
//   cos θ = the mean over pairs i < j of clamp(δᵢ·δⱼ / max(‖δᵢ‖‖δⱼ‖, 1e-6), −1, 1),
//   t = N cos θ / (1 + (N − 1) cos θ),   W = t · mean(wᵢ) + (1 − t) · w0.
// Fine-tunes that agree (cos θ → 1) give t → 1, the average; orthogonal ones give t = 0, the
// base. mergekit computes in the tensors' dtype; revmerge in f64, rounded once. (mergekit's
// filter_wise, one angle per row, is not built: the config reader refuses it by name.)
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

void model_stock_tensor(const TensorInputs& in, std::span<float> out) {
  const auto& w0 = in.base;
  const std::size_t n = in.n, m = w0.size();
  std::vector<std::vector<double>> deltas(n, std::vector<double>(m));
  std::vector<double> norms(n);
  for (std::size_t i = 0; i < n; ++i) {
    double sq = 0;
    for (std::size_t k = 0; k < m; ++k) {
      deltas[i][k] = double(in.model(i)[k]) - w0[k];
      sq += deltas[i][k] * deltas[i][k];
    }
    norms[i] = std::sqrt(sq);
  }
  double cos_sum = 0;
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = i + 1; j < n; ++j) {
      double dot = 0;
      for (std::size_t k = 0; k < m; ++k) dot += deltas[i][k] * deltas[j][k];
      cos_sum += std::clamp(dot / std::max(norms[i] * norms[j], 1e-6), -1.0, 1.0);
    }
  const double cos = cos_sum / double(n * (n - 1) / 2), nd = double(n);
  const double denominator = 1 + (nd - 1) * cos;
  if (denominator == 0)
    throw format_error("tensor '" + in.name + "': the fine-tunes' task vectors have a mean cos θ of "
                       "−1/(N − 1), where model_stock's t = N cos θ / (1 + (N − 1) cos θ) is "
                       "infinite; model_stock cannot merge these models");
  const double t = nd * cos / denominator;
  // W = t · mean(w) + (1 − t) · w0 = w0 + t · mean(δ).
  for (std::size_t k = 0; k < m; ++k) {
    double mean = 0;
    for (std::size_t i = 0; i < n; ++i) mean += deltas[i][k];
    out[k] = static_cast<float>(w0[k] + t * (mean / nd));
  }
}

}  // namespace revmerge
