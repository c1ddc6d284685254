// mergekit's interpolations on the sphere, on full models, each floating-point tensor on its own
// (task vectors δᵢ = Wᵢ − W_base where a base is given, the weights themselves otherwise):
//  - nuslerp: two models, t = w₂ / (w₁ + w₂) (½ where |w₁ + w₂| < 1e-6), slerp between them —
//    the whole tensor as one vector (nuslerp_flatten, the default), or each vector along the last
//    axis, or along the first (nuslerp_row_wise); with cos θ of the vectors normalised by
//    max(‖v‖, 1e-7), linear where 1 − cos²θ ≤ 1e-16;
//  - multislerp: n models with weights (normalised to sum 1 by default): the unit vectors'
//    weighted mean m on the sphere, the weighted tangent vectors at m mapped back by the
//    exponential map, scaled by the weighted mean norm;
//  - karcher: every model (the base too, when given) with equal weights: the Karcher mean of the
//    unit vectors by at most max_iter Riemannian steps (stopping below tol), scaled by the mean
//    norm.
// mergekit computes in f32; revmerge in f64, rounded once.
#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <numeric>

#include "methods/classic/piece_merge.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;
using Vec = std::vector<double>;

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

double norm(const Vec& a) { return std::sqrt(dot(a, a)); }

// One vector of nuslerp: v0, v1 gathered along the chosen axis, the result written back.
Vec nuslerp_vector(double t, const Vec& v0, const Vec& v1) {
  const double n0 = std::max(norm(v0), 1e-7), n1 = std::max(norm(v1), 1e-7);
  const double cos = std::clamp(dot(v0, v1) / (n0 * n1), -1.0, 1.0);
  Vec out(v0.size());
  if (1 - cos * cos <= 1e-16) {
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = (1 - t) * v0[i] + t * v1[i];
    return out;
  }
  const double theta = std::acos(cos), s = std::sin(theta);
  const double c0 = std::sin((1 - t) * theta), c1 = std::sin(t * theta);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = (c0 * v0[i] + c1 * v1[i]) / s;
  return out;
}

// How nuslerp cuts a tensor into vectors: `vectors` of `length` elements, element j of
// vector k at flat offset k · step + j · stride.
struct VectorLayout {
  i64 vectors = 1, length = 0, stride = 1, step = 0;
};

VectorLayout nuslerp_layout(const std::vector<i64>& shape, i64 count, bool flatten, bool row_wise) {
  if (flatten || shape.size() < 2) return {1, count, 1, 0};
  if (!row_wise) {  // along the last axis
    const i64 length = shape.back();
    return {length ? count / length : 0, length, 1, length};
  }
  const i64 length = shape.front(), stride = length ? count / length : 0;  // along the first axis
  return {stride, length, stride, 1};
}

Vec multislerp(const std::vector<Vec>& x, const std::vector<double>& w, double eps,
               const std::string& name) {
  const std::size_t n = x.size(), m = x[0].size();
  std::vector<double> norms(n);
  std::vector<Vec> unit(n, Vec(m));
  Vec mean(m, 0.0);
  for (std::size_t i = 0; i < n; ++i) {
    norms[i] = norm(x[i]);
    for (std::size_t k = 0; k < m; ++k) {
      unit[i][k] = x[i][k] / (norms[i] + eps);
      mean[k] += w[i] * unit[i][k];
    }
  }
  const double mean_norm = norm(mean);
  if (mean_norm < eps) {
    if (n != 2)
      throw format_error("tensor '" + name + "': the weighted mean of the models' directions is 0 "
                         "(antipodal models whose weights balance); multislerp cannot merge it — "
                         "try other weights");
    Vec out(m);
    for (std::size_t k = 0; k < m; ++k) out[k] = w[0] * x[0][k] + w[1] * x[1][k];
    return out;
  }
  for (auto& v : mean) v /= mean_norm;
  Vec tangent(m, 0.0);
  for (std::size_t i = 0; i < n; ++i) {
    const double d = dot(unit[i], mean);
    for (std::size_t k = 0; k < m; ++k) tangent[k] += w[i] * (unit[i][k] - d * mean[k]);
  }
  const double tn = norm(tangent) + eps;
  double scale = 0;
  for (std::size_t i = 0; i < n; ++i) scale += norms[i] * w[i];
  Vec out(m);
  for (std::size_t k = 0; k < m; ++k)
    out[k] = (mean[k] * std::cos(tn) + tangent[k] * (std::sin(tn) / tn)) * scale;
  return out;
}

Vec karcher(const std::vector<Vec>& x, i64 max_iter, double tol) {
  const std::size_t n = x.size(), m = x[0].size();
  const double alpha = 1.0 / double(n);
  std::vector<double> norms(n);
  std::vector<std::size_t> valid;
  for (std::size_t i = 0; i < n; ++i) {
    norms[i] = norm(x[i]);
    if (norms[i] > tol) valid.push_back(i);
  }
  if (valid.empty()) return Vec(m, 0.0);
  std::vector<Vec> unit;
  for (const auto i : valid) {
    Vec u(m);
    for (std::size_t k = 0; k < m; ++k) u[k] = x[i][k] / norms[i];
    unit.push_back(std::move(u));
  }
  const double a = 1.0 / double(valid.size());  // the valid models' weights, normalised
  Vec mean(m, 0.0);
  for (const auto& u : unit)
    for (std::size_t k = 0; k < m; ++k) mean[k] += a * u[k];
  const double mn = norm(mean);
  if (mn < tol) mean = unit[0];
  else
    for (auto& v : mean) v /= mn;
  for (i64 it = 0; it < max_iter; ++it) {
    Vec tangent(m, 0.0);
    for (const auto& u : unit) {
      const double d = std::clamp(dot(mean, u), -1.0, 1.0), theta = std::acos(d);
      if (theta < tol) continue;
      const double f = a * theta / std::sin(theta);
      for (std::size_t k = 0; k < m; ++k) tangent[k] += f * (u[k] - d * mean[k]);
    }
    const double tn = norm(tangent);
    if (tn < tol) break;
    for (std::size_t k = 0; k < m; ++k)
      mean[k] = std::cos(tn) * mean[k] + std::sin(tn) * (tangent[k] / tn);
    const double un = norm(mean);
    if (un > tol)
      for (auto& v : mean) v /= un;
  }
  double scale = 0;  // every model's norm counts here, the vanishing ones too (as mergekit)
  for (std::size_t i = 0; i < n; ++i) scale += alpha * norms[i];
  for (auto& v : mean) v *= scale;
  return mean;
}

// The models' weights; for multislerp normalised to sum 1 (unless normalize_weights is off).
std::vector<double> spherical_weights(const ClassicMergeOptions& o, const std::string& tensor) {
  auto weights = task_parameters(o, o.tasks.size()).weights;
  if (o.method == ClassicMethod::multislerp && o.normalize.value_or(true)) {
    const double sum = std::accumulate(weights.begin(), weights.end(), 0.0);
    if (sum == 0)
      throw usage_error("--weights: they sum to 0, and multislerp divides by their sum" +
                        (tensor.empty() ? std::string() : " (tensor '" + tensor + "')"));
    for (auto& w : weights) w /= sum;
  }
  return weights;
}

}  // namespace

bool is_spherical(ClassicMethod method) {
  return method == ClassicMethod::nuslerp || method == ClassicMethod::multislerp ||
         method == ClassicMethod::karcher;
}

void check_spherical_options(const ClassicMergeOptions& o) {
  const std::string method = "--method " + to_string(o.method);
  const std::size_t n = o.tasks.size();
  const bool has_base = !o.base.empty();
  if (o.method == ClassicMethod::nuslerp && n != 2)
    throw usage_error(method + " interpolates between exactly 2 models besides the base; got " + std::to_string(n));
  if (o.method != ClassicMethod::nuslerp && n + has_base < 2)
    throw usage_error(method + " needs at least 2 models; got " + std::to_string(n + has_base));
  if (o.method == ClassicMethod::karcher && (!o.weights.empty() || is_set_per_tensor(o, "weight")))
    throw usage_error("--weights: not an option of --method karcher (every model counts equally)");
  for (const auto& [given, name] : {std::pair{o.lambda.has_value(), "--lambda"},
                                    std::pair{o.rescale.has_value(), "--rescale"}})
    if (given) throw usage_error(std::string(name) + ": not an option of " + method);
  if (o.normalize && o.method != ClassicMethod::multislerp)
    throw usage_error("--normalize: not an option of " + method);
  if (!(o.eps.value_or(1e-8) > 0) || !(o.tol.value_or(1e-5) > 0) || o.max_iter.value_or(10) < 1)
    throw usage_error("--eps, --tol and --max-iter must be above 0");
  if (!is_set_per_tensor(o, "weight")) spherical_weights(o, "");
}

void spherical_tensor(const ClassicMergeOptions& o, const TensorInputs& in, std::span<float> out) {
  const bool has_base = !in.base.empty();
  const auto& b = in.base;
  std::vector<Vec> x;
  if (o.method == ClassicMethod::karcher && has_base) x.emplace_back(b.begin(), b.end());
  for (std::size_t i = 0; i < in.n; ++i) {
    const auto w = in.model(i);
    Vec v(w.begin(), w.end());
    if (has_base && o.method != ClassicMethod::karcher)
      for (std::size_t k = 0; k < v.size(); ++k) v[k] -= b[k];
    x.push_back(std::move(v));
  }
  Vec r;
  if (o.method == ClassicMethod::nuslerp) {
    const auto weights = spherical_weights(o, in.name);
    // The position between the two models.
    const double total = weights[0] + weights[1];
    const double t = std::fabs(total) < 1e-6 ? 0.5 : weights[1] / total;
    r.resize(out.size());
    const auto l = nuslerp_layout(in.shape, static_cast<i64>(out.size()),
                                  o.nuslerp_flatten.value_or(true), o.nuslerp_row_wise.value_or(false));
    Vec v0(l.length), v1(l.length);
    for (i64 k = 0; k < l.vectors; ++k) {
      const i64 at = k * l.step;
      for (i64 j = 0; j < l.length; ++j) {
        v0[j] = x[0][at + j * l.stride];
        v1[j] = x[1][at + j * l.stride];
      }
      const auto v = nuslerp_vector(t, v0, v1);
      for (i64 j = 0; j < l.length; ++j) r[at + j * l.stride] = v[j];
    }
  } else if (o.method == ClassicMethod::multislerp) {
    r = x.size() == 1 ? x[0] : multislerp(x, spherical_weights(o, in.name), o.eps.value_or(1e-8), in.name);
    if (x.size() == 1 && has_base)  // mergekit returns the one model itself
      for (std::size_t k = 0; k < r.size(); ++k) r[k] += b[k];
  } else {
    r = x.size() == 1 ? x[0] : karcher(x, o.max_iter.value_or(10), o.tol.value_or(1e-5));
  }
  const bool add_base = has_base && o.method != ClassicMethod::karcher && x.size() > 1;
  for (std::size_t k = 0; k < out.size(); ++k) out[k] = static_cast<float>(add_base ? r[k] + b[k] : r[k]);
}

namespace {

// A model's value at element k of a piece: its task vector where there is a base.
double value(const TensorInputs& in, std::size_t i, std::size_t k) {
  return in.base.empty() ? double(in.model(i)[k]) : double(in.model(i)[k]) - in.base[k];
}

// nuslerp in pieces: the whole tensor as one vector (one pass for its norms and dot product),
// or vectors along the last axis (pieces of whole rows). Along the first axis: whole tensors.
class NuslerpPieces final : public PieceMerger {
 public:
  NuslerpPieces(double t, i64 row) : t_(t), row_(row) {}
  i64 granule() const override { return std::max<i64>(row_, 1); }
  bool wants_pass() const override { return row_ == 0 && !summed_; }
  void observe(const TensorInputs& in, int) override {
    for (std::size_t k = 0; k < in.count; ++k) {
      const double a = value(in, 0, k), b = value(in, 1, k);
      s00_ += a * a;
      s11_ += b * b;
      s01_ += a * b;
    }
  }
  void end_pass() override { summed_ = true; }
  void produce(TensorInputs& in, std::span<float> out, int) override {
    if (row_ == 0) return blend(in, 0, in.count, s00_, s11_, s01_, out);
    const auto length = static_cast<std::size_t>(row_);
    for (std::size_t at = 0; at < in.count; at += length) {
      double s00 = 0, s11 = 0, s01 = 0;
      for (std::size_t k = at; k < at + length; ++k) {
        const double a = value(in, 0, k), b = value(in, 1, k);
        s00 += a * a;
        s11 += b * b;
        s01 += a * b;
      }
      blend(in, at, at + length, s00, s11, s01, out);
    }
  }

 private:
  // nuslerp_vector's arithmetic on elements [from, to), from the vector's sums.
  void blend(const TensorInputs& in, std::size_t from, std::size_t to, double s00, double s11, double s01,
             std::span<float> out) const {
    const double n0 = std::max(std::sqrt(s00), 1e-7), n1 = std::max(std::sqrt(s11), 1e-7);
    const double cos = std::clamp(s01 / (n0 * n1), -1.0, 1.0);
    const bool linear = 1 - cos * cos <= 1e-16;
    const double theta = linear ? 0.0 : std::acos(cos), s = std::sin(theta);
    const double c0 = std::sin((1 - t_) * theta), c1 = std::sin(t_ * theta);
    for (std::size_t k = from; k < to; ++k) {
      const double a = value(in, 0, k), b = value(in, 1, k);
      const double r = linear ? (1 - t_) * a + t_ * b : (c0 * a + c1 * b) / s;
      out[k] = static_cast<float>(in.base.empty() ? r : r + in.base[k]);
    }
  }

  double t_;
  i64 row_;  // 0: the tensor as one vector
  double s00_ = 0, s11_ = 0, s01_ = 0;
  bool summed_ = false;
};

// multislerp in pieces: four passes (the models' norms; their directions' weighted mean and its
// norm; each direction's dot product with the mean; the tangent's norm), then the map back.
// Each pass recomputes an element's directions from its values and the sums so far, in the
// order multislerp() takes them.
class MultislerpPieces final : public PieceMerger {
 public:
  MultislerpPieces(std::vector<double> w, double eps, std::string name)
      : w_(std::move(w)), eps_(eps), name_(std::move(name)), sq_(w_.size(), 0.0), d_(w_.size(), 0.0),
        unit_(w_.size()) {}
  bool wants_pass() const override { return pass_ < 4 && !degenerate_; }
  void observe(const TensorInputs& in, int) override {
    for (std::size_t k = 0; k < in.count; ++k) {
      if (pass_ == 0) {
        for (std::size_t i = 0; i < w_.size(); ++i) {
          const double v = value(in, i, k);
          sq_[i] += v * v;
        }
        continue;
      }
      const double m = mean(in, k);
      if (pass_ == 1) {
        msq_ += m * m;
      } else if (pass_ == 2) {
        for (std::size_t i = 0; i < w_.size(); ++i) d_[i] += unit_[i] * (m / mean_norm_);
      } else {
        const double t = tangent(m / mean_norm_);
        tsq_ += t * t;
      }
    }
  }
  void end_pass() override {
    if (pass_ == 0) {
      norms_.resize(w_.size());
      for (std::size_t i = 0; i < w_.size(); ++i) norms_[i] = std::sqrt(sq_[i]);
    } else if (pass_ == 1) {
      mean_norm_ = std::sqrt(msq_);
      if (mean_norm_ < eps_) {
        if (w_.size() != 2)
          throw format_error("tensor '" + name_ + "': the weighted mean of the models' directions is 0 "
                             "(antipodal models whose weights balance); multislerp cannot merge it — "
                             "try other weights");
        degenerate_ = true;
      }
    } else if (pass_ == 3) {
      tn_ = std::sqrt(tsq_) + eps_;
      for (std::size_t i = 0; i < w_.size(); ++i) scale_ += norms_[i] * w_[i];
    }
    ++pass_;
  }
  void produce(TensorInputs& in, std::span<float> out, int) override {
    const bool base = !in.base.empty();
    for (std::size_t k = 0; k < in.count; ++k) {
      double r;
      if (degenerate_) {
        r = w_[0] * value(in, 0, k) + w_[1] * value(in, 1, k);
      } else {
        const double m = mean(in, k) / mean_norm_;
        r = (m * std::cos(tn_) + tangent(m) * (std::sin(tn_) / tn_)) * scale_;
      }
      out[k] = static_cast<float>(base ? r + in.base[k] : r);
    }
  }

 private:
  // The element's weighted mean of the directions (unit_ left holding the directions).
  double mean(const TensorInputs& in, std::size_t k) {
    double m = 0;
    for (std::size_t i = 0; i < w_.size(); ++i) {
      unit_[i] = value(in, i, k) / (norms_[i] + eps_);
      m += w_[i] * unit_[i];
    }
    return m;
  }
  // The element's weighted tangent at the normalised mean `m` (after mean()).
  double tangent(double m) const {
    double t = 0;
    for (std::size_t i = 0; i < w_.size(); ++i) t += w_[i] * (unit_[i] - d_[i] * m);
    return t;
  }

  std::vector<double> w_;
  double eps_;
  std::string name_;
  std::vector<double> sq_, norms_, d_, unit_;
  double msq_ = 0, mean_norm_ = 0, tsq_ = 0, tn_ = 0, scale_ = 0;
  int pass_ = 0;
  bool degenerate_ = false;
};

}  // namespace

std::unique_ptr<PieceMerger> spherical_merger(const ClassicMergeOptions& o, const std::string& name,
                                              const std::vector<i64>& shape, std::size_t n, bool has_base) {
  if (o.method == ClassicMethod::nuslerp) {
    const bool flatten = o.nuslerp_flatten.value_or(true) || shape.size() < 2;
    if (!flatten && o.nuslerp_row_wise.value_or(false)) return nullptr;  // columns: the whole tensor
    const auto weights = spherical_weights(o, name);
    const double total = weights[0] + weights[1];
    const double t = std::fabs(total) < 1e-6 ? 0.5 : weights[1] / total;
    return std::make_unique<NuslerpPieces>(t, flatten ? 0 : shape.back());
  }
  if (o.method == ClassicMethod::multislerp && n >= 2)
    return std::make_unique<MultislerpPieces>(spherical_weights(o, name), o.eps.value_or(1e-8), name);
  (void)has_base;
  return nullptr;  // karcher's iterations, and multislerp of one model beside the base
}

}  // namespace revmerge
