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
// mergekit computes in the tensors' dtype; revmerge in f64, rounded once.
#include <algorithm>
#include <cmath>

#include "methods/classic/classic_internal.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

struct RamParameters {
  double epsilon = 1e-5, r = 0.1, alpha = 0.2;
  bool plus = false;
};

// ram's and ramplus_tl's parameters, checked (`tensor` names where they were resolved).
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
      scale[i] = 1 + p.r * std::clamp(shared / std::max(unique, p.epsilon), 0.0, p.alpha);
    }
  for (std::size_t k = 0; k < m; ++k) {
    double sum = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (changed(i, k)) sum += (x(i, k) - base[k]) * (count[k] == 1 ? scale[i] : 1.0);
    out[k] = static_cast<float>(base[k] + (count[k] > 1 ? sum / count[k] : sum));
  }
}

// Arcee Fusion's importance of each element: |w − b| times the KL divergence of the softmaxes of
// its row (the last axis; a 1-D tensor is one row), each with 1e-8 added.
std::vector<double> fusion_importance(std::span<const float> w, const std::vector<float>& b,
                                      i64 row) {
  std::vector<double> importance(w.size());
  std::vector<double> p(static_cast<std::size_t>(row)), q(p.size());
  const auto softmax = [row](const float* v, std::vector<double>& s) {
    const double top = *std::max_element(v, v + row);
    double sum = 0;
    for (i64 j = 0; j < row; ++j) sum += s[j] = std::exp(double(v[j]) - top);
    for (auto& e : s) e = e / sum + 1e-8;
  };
  for (std::size_t at = 0; at < w.size(); at += static_cast<std::size_t>(row)) {
    softmax(w.data() + at, p);
    softmax(b.data() + at, q);
    double kl = 0;
    for (i64 j = 0; j < row; ++j) kl += p[j] * std::log(p[j] / q[j]);
    for (i64 j = 0; j < row; ++j) importance[at + j] = std::fabs(double(w[at + j]) - b[at + j]) * kl;
  }
  return importance;
}

double fusion_threshold(std::vector<double> v) {
  const auto at = [&](double q) {
    auto k = v.begin() + static_cast<std::ptrdiff_t>(q * static_cast<double>(v.size() - 1));
    std::nth_element(v.begin(), k, v.end());
    return *k;
  };
  const double q1 = at(0.25), median = at(0.5), q3 = at(0.75);
  return median + 1.5 * (q3 - q1);
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

void selective_tensor(const ClassicMergeOptions& o, const TensorInputs& in, std::span<float> out) {
  const auto& b = in.base;
  if (o.method != ClassicMethod::arcee_fusion) {
    ram(in, ram_parameters(o, in.name), out);
    return;
  }
  if (b.empty()) return;
  const i64 row = in.shape.empty() ? 1 : in.shape.back();
  const auto w = in.model(0);
  const auto importance = fusion_importance(w, b, std::max<i64>(row, 1));
  const double threshold = fusion_threshold(importance);
  for (std::size_t k = 0; k < out.size(); ++k) out[k] = importance[k] >= threshold ? w[k] : b[k];
}

}  // namespace revmerge
