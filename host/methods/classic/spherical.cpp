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
#include <array>
#include <cmath>
#include <fmt/format.h>
#include <numeric>

#include "kernels/elementwise.hpp"
#include "methods/classic/for_blocks.hpp"
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

// a · b of the whole tensor as one vector, in the order the statistics blocks keep it: block c's
// 8 lanes (element i in lane i mod 8, each lane in index order) added in a fixed tree, the blocks
// in order (kernels/elementwise.hpp).
double lane_dot(const Vec& a, const Vec& b) {
  const auto count = static_cast<i64>(a.size()), block = kernels::kStatBlock;
  double total = 0;
  for (i64 c = 0; c * block < count; ++c) {
    double lane[kernels::kStatLanes] = {};
    for (i64 i = c * block; i < std::min(count, (c + 1) * block); ++i) lane[i % kernels::kStatLanes] += a[i] * b[i];
    total += kernels::block_lanes_sum(lane);
  }
  return total;
}

double lane_norm(const Vec& a) { return std::sqrt(lane_dot(a, a)); }

// One vector of nuslerp: v0, v1 gathered along the chosen axis, the result written back; the
// tensor as one vector (`whole`) summed in the statistics blocks' lanes.
Vec nuslerp_vector(double t, const Vec& v0, const Vec& v1, bool whole) {
  const auto sum = [&](const Vec& a, const Vec& b) { return whole ? lane_dot(a, b) : dot(a, b); };
  const double n0 = std::max(std::sqrt(sum(v0, v0)), 1e-7), n1 = std::max(std::sqrt(sum(v1, v1)), 1e-7);
  const double cos = std::clamp(sum(v0, v1) / (n0 * n1), -1.0, 1.0);
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
  // Every sum over the tensor in the statistics blocks' lanes (lane_dot), as the passes take them.
  for (std::size_t i = 0; i < n; ++i) norms[i] = std::sqrt(lane_dot(x[i], x[i]));
  for (std::size_t k = 0; k < m; ++k)
    for (std::size_t i = 0; i < n; ++i) {
      unit[i][k] = x[i][k] / (norms[i] + eps);
      mean[k] += w[i] * unit[i][k];
    }
  const double mean_norm = std::sqrt(lane_dot(mean, mean));
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
    const double d = lane_dot(unit[i], mean);
    for (std::size_t k = 0; k < m; ++k) tangent[k] += w[i] * (unit[i][k] - d * mean[k]);
  }
  const double tn = std::sqrt(lane_dot(tangent, tangent)) + eps;
  double scale = 0;
  for (std::size_t i = 0; i < n; ++i) scale += norms[i] * w[i];
  Vec out(m);
  for (std::size_t k = 0; k < m; ++k)
    out[k] = (mean[k] * std::cos(tn) + tangent[k] * (std::sin(tn) / tn)) * scale;
  return out;
}

Vec karcher(const std::vector<Vec>& x, i64 max_iter, double tol) {
  const auto models = static_cast<int>(x.size());
  std::vector<double> gram(static_cast<std::size_t>(kernels::stock_sums(models)));
  for (int q = 0; q < kernels::stock_sums(models); ++q) {
    int a, b;
    kernels::stock_pair(models, q, a, b);
    gram[q] = lane_dot(x[a], x[b]);
  }
  const auto coef = karcher_coefficients(gram, x.size(), max_iter, tol);
  Vec out(x[0].size());
  for (std::size_t k = 0; k < out.size(); ++k) {
    double r = 0;
    for (std::size_t q = 0; q < x.size(); ++q) r += coef[q] * x[q][k];
    out[k] = r;
  }
  return out;
}

}  // namespace

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
      const auto v = nuslerp_vector(t, v0, v1, o.nuslerp_flatten.value_or(true) || in.shape.size() < 2);
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

// nuslerp in pieces: the whole tensor as one vector (one pass for its norms and dot product, in
// the statistics blocks' lanes), vectors along the last axis (pieces of whole rows), or along the
// first axis (one pass for every column's sums, pieces of whole rows). The steps are
// kernels/elementwise.hpp's pair_*, the ones a backend runs; the coefficients come from the host.
class NuslerpPieces final : public PieceMerger {
 public:
  NuslerpPieces(const NuslerpPlan& plan, i64 numel) : plan_(plan) {
    const i64 blocks = (numel + kernels::kStatBlock - 1) / kernels::kStatBlock;
    const i64 sums = plan.layout == 0 ? blocks * kernels::kStatLanes : plan.layout == 2 ? plan.row : 0;
    for (auto& s : sums_) s.assign(static_cast<std::size_t>(sums), 0.0);
  }
  i64 granule() const override { return plan_.layout == 0 ? 1 : plan_.row; }
  std::uint64_t held_bytes(int) const override { return sums_.size() * sums_[0].size() * sizeof(double); }
  bool wants_pass() const override { return plan_.layout != 1 && !summed_; }
  void observe(const TensorInputs& in, int threads) override {
    run_host_step(step(plan_.layout == 0 ? kernels::ElementwiseKind::pair_lanes : kernels::ElementwiseKind::pair_columns,
                       in, nullptr, nullptr),
                  threads);
  }
  void end_pass() override {
    summed_ = true;
    if (plan_.layout == 0) {
      const i64 blocks = static_cast<i64>(sums_[0].size()) / kernels::kStatLanes;
      coef_ = nuslerp_coefficients(plan_.t, kernels::lanes_total(sums_[0].data(), blocks),
                                   kernels::lanes_total(sums_[1].data(), blocks),
                                   kernels::lanes_total(sums_[2].data(), blocks));
    } else {
      coefficients(sums_, plan_.row, coef_all_);
    }
  }
  void produce(TensorInputs& in, std::span<float> out, int threads) override {
    const double* coef = plan_.layout == 0 ? coef_.data() : coef_all_.data();
    if (plan_.layout == 1) {  // each row's sums, then its coefficients
      const auto rows = static_cast<i64>(in.count) / plan_.row;
      for (auto& s : row_sums_) s.resize(static_cast<std::size_t>(rows));
      run_host_step(step(kernels::ElementwiseKind::pair_rows, in, nullptr, nullptr, row_sums_), threads);
      coefficients(row_sums_, rows, coef_all_);
      coef = coef_all_.data();
    }
    run_host_step(step(kernels::ElementwiseKind::pair_blend, in, coef, out.data()), threads);
  }

 private:
  using Sums = std::array<std::vector<double>, 3>;
  // The step over the piece `in` (read only: the steps that write go to sums and out).
  kernels::ElementwiseStep step(kernels::ElementwiseKind kind, const TensorInputs& in, const double* coef, float* out) {
    return step(kind, in, coef, out, sums_);
  }
  kernels::ElementwiseStep step(kernels::ElementwiseKind kind, const TensorInputs& in, const double* coef, float* out,
                                Sums& sums) const {
    double* s[3] = {sums[0].data(), sums[1].data(), sums[2].data()};
    return nuslerp_step(kind, plan_, in.first, static_cast<i64>(in.count), const_cast<float*>(in.stacked.data()),
                        in.base.empty() ? nullptr : const_cast<float*>(in.base.data()), s, coef, out);
  }
  void coefficients(const Sums& s, i64 vectors, std::vector<double>& out) const {
    out.resize(static_cast<std::size_t>(4 * vectors));
    for (i64 v = 0; v < vectors; ++v) {
      const auto c = nuslerp_coefficients(plan_.t, s[0][v], s[1][v], s[2][v]);
      std::copy(c.begin(), c.end(), out.begin() + 4 * v);
    }
  }

  NuslerpPlan plan_;
  Sums sums_, row_sums_;
  std::array<double, 4> coef_{};
  std::vector<double> coef_all_;
  bool summed_ = false;
};

// multislerp of one model beside the base: the model itself (as mergekit returns it).
class OneModelPieces final : public PieceMerger {
 public:
  void produce(TensorInputs& in, std::span<float> out, int) override {
    for (std::size_t k = 0; k < in.count; ++k)
      out[k] = static_cast<float>(in.base.empty() ? value(in, 0, k) : value(in, 0, k) + in.base[k]);
  }
};

// multislerp in pieces: four passes (the models' norms; their directions' weighted mean and its
// norm; each direction's dot product with the mean; the tangent's norm), then the map back
// (MultislerpSums: kernels/elementwise.hpp's steps, the ones a backend runs).
class MultislerpPieces final : public PieceMerger {
 public:
  MultislerpPieces(i64 numel, std::vector<double> w, double eps, std::string name)
      : sums_(numel, std::move(w), eps, std::move(name)) {}
  bool wants_pass() const override { return sums_.wants_pass(); }
  std::uint64_t held_bytes(int) const override { return sums_.lane_count() * sizeof(double); }
  void observe(const TensorInputs& in, int threads) override {
    run_host_step(sums_.step(in.first, static_cast<i64>(in.count), const_cast<float*>(in.stacked.data()),
                             base(in), sums_.lanes().data(), sums_.weights().data(), sums_.norms().data(),
                             sums_.dots().data()),
                  threads);
  }
  void end_pass() override { sums_.end_pass(); }
  void produce(TensorInputs& in, std::span<float> out, int threads) override {
    run_host_step(sums_.blend(static_cast<i64>(in.count), in.stacked.data(), base(in), sums_.weights().data(),
                              sums_.norms().data(), sums_.dots().data(), out.data()),
                  threads);
  }

 private:
  static float* base(const TensorInputs& in) { return in.base.empty() ? nullptr : const_cast<float*>(in.base.data()); }
  MultislerpSums sums_;
};

// karcher in pieces: one pass for the models' Gram sums, then the blend with the coefficients
// decided from them (KarcherSums: kernels/elementwise.hpp's steps, the ones a backend runs).
class KarcherPieces final : public PieceMerger {
 public:
  KarcherPieces(std::size_t models, i64 max_iter, double tol, i64 numel) : sums_(numel, models, max_iter, tol) {}
  std::uint64_t held_bytes(int) const override { return sums_.lane_count() * sizeof(double); }
  bool wants_pass() const override { return sums_.wants_pass(); }
  void observe(const TensorInputs& in, int threads) override {
    run_host_step(sums_.step(in.first, static_cast<i64>(in.count), const_cast<float*>(in.stacked.data()), base(in),
                             sums_.lanes().data()),
                  threads);
  }
  void end_pass() override { sums_.end_pass(); }
  void produce(TensorInputs& in, std::span<float> out, int threads) override {
    run_host_step(sums_.blend(static_cast<i64>(in.count), in.stacked.data(), base(in), sums_.table().data(), out.data()),
                  threads);
  }

 private:
  static float* base(const TensorInputs& in) { return in.base.empty() ? nullptr : const_cast<float*>(in.base.data()); }
  KarcherSums sums_;
};

}  // namespace

NuslerpPlan nuslerp_plan(const ClassicMergeOptions& o, const std::string& name, const std::vector<i64>& shape) {
  const auto weights = spherical_weights(o, name);
  const double total = weights[0] + weights[1];
  NuslerpPlan p;
  p.t = std::fabs(total) < 1e-6 ? 0.5 : weights[1] / total;  // the position between the two models
  i64 numel = 1;
  for (const auto d : shape) numel *= d;
  if (o.nuslerp_flatten.value_or(true) || shape.size() < 2) return p;
  if (!o.nuslerp_row_wise.value_or(false)) {
    p.layout = 1;
    p.row = std::max<i64>(shape.back(), 1);
    return p;
  }
  // Along the first axis: each of the numel / shape[0] columns of the (shape[0], rest) view.
  p.layout = 2;
  p.row = std::max<i64>(shape.front() ? numel / shape.front() : 1, 1);
  return p;
}

std::array<double, 4> nuslerp_coefficients(double t, double s00, double s11, double s01) {
  const double n0 = std::max(std::sqrt(s00), 1e-7), n1 = std::max(std::sqrt(s11), 1e-7);
  const double cos = std::clamp(s01 / (n0 * n1), -1.0, 1.0);
  if (1 - cos * cos <= 1e-16) return {1.0, 0.0, 0.0, 0.0};  // linear
  const double theta = std::acos(cos);
  return {0.0, std::sin((1 - t) * theta), std::sin(t * theta), std::sin(theta)};
}

kernels::ElementwiseStep nuslerp_step(kernels::ElementwiseKind kind, const NuslerpPlan& plan, i64 first, i64 count,
                                      float* models, float* base, double* const* sums, const double* coef,
                                      float* out) {
  kernels::ElementwiseStep st;
  st.kind = kind;
  st.first = first;
  st.count = count;
  st.x = models;
  st.base = base;
  st.has_base = base != nullptr;
  for (int k = 0; k < 3; ++k) st.sums[k] = sums ? sums[k] : nullptr;
  st.coef = coef;
  st.out = out;
  st.t = plan.t;
  st.row = plan.row;
  st.pair_layout = plan.layout;
  return st;
}

MultislerpSums::MultislerpSums(i64 count, std::vector<double> w, double eps, std::string tensor)
    : w_(std::move(w)), eps_(eps), tensor_(std::move(tensor)),
      blocks_((count + kernels::kStatBlock - 1) / kernels::kStatBlock),
      lanes_(w_.size() * static_cast<std::size_t>(blocks_ * kernels::kStatLanes), 0.0), norms_(w_.size(), 0.0),
      dots_(w_.size(), 0.0) {}

kernels::ElementwiseStep MultislerpSums::step(i64 first, i64 count, float* models, float* base, double* lanes,
                                              const double* weights, const double* norms, const double* dots) const {
  kernels::ElementwiseStep st;
  st.kind = kernels::ElementwiseKind::multislerp_lanes;
  st.first = first;
  st.count = count;
  st.n = static_cast<int>(w_.size());
  st.x = models;
  st.base = base;
  st.has_base = base != nullptr;
  st.stock = lanes;
  st.stock_stride = blocks_ * kernels::kStatLanes;
  st.weights = weights;
  st.norms = norms;
  st.dots = dots;
  st.eps = eps_;
  st.mean_norm = mean_norm_;
  st.multi_pass = pass_;
  return st;
}

void MultislerpSums::end_pass() {
  const i64 stride = blocks_ * kernels::kStatLanes;
  const auto total = [&](std::size_t q) { return kernels::lanes_total(lanes_.data() + q * stride, blocks_); };
  if (pass_ == 0) {
    for (std::size_t i = 0; i < w_.size(); ++i) norms_[i] = std::sqrt(total(i));
  } else if (pass_ == 1) {
    mean_norm_ = std::sqrt(total(0));
    if (mean_norm_ < eps_) {
      if (w_.size() != 2)
        throw format_error("tensor '" + tensor_ + "': the weighted mean of the models' directions is 0 "
                           "(antipodal models whose weights balance); multislerp cannot merge it — "
                           "try other weights");
      degenerate_ = true;
    }
  } else if (pass_ == 2) {
    for (std::size_t i = 0; i < w_.size(); ++i) dots_[i] = total(i);
  } else {
    tn_ = std::sqrt(total(0)) + eps_;
    for (std::size_t i = 0; i < w_.size(); ++i) scale_ += norms_[i] * w_[i];
  }
  std::fill(lanes_.begin(), lanes_.end(), 0.0);
  ++pass_;
}

kernels::ElementwiseStep MultislerpSums::blend(i64 count, float* models, float* base, const double* weights,
                                               const double* norms, const double* dots, float* out) const {
  auto st = step(0, count, models, base, nullptr, weights, norms, dots);
  st.kind = kernels::ElementwiseKind::multislerp_blend;
  st.degenerate = degenerate_;
  st.s0 = std::cos(tn_);
  st.s1 = std::sin(tn_) / tn_;
  st.factor = scale_;
  st.out = out;
  return st;
}

// The mean m = Σ_v c_v u_v of the valid models' directions u_v = x_v / ‖x_v‖ (‖x_v‖ > tol)
// stays in their span: the first mean is their average, each step's tangent
// Σ_v f_v (u_v − d_v m) has coefficients f − (Σ_v f_v d_v) c, and every dot product and norm a
// step takes (d_v = m · u_v, ‖t‖, ‖m‖) is a quadratic form in the unit Gram matrix
// G_vw = u_v · u_w. So mergekit's iteration runs here on V coefficients, in the order karcher()
// took it on whole vectors: equal weights a = 1 / V, the first mean normalised (u_0 where its
// norm is below tol), at most max_iter steps of angle θ_v = acos(clamp(d_v)) (a model within tol
// of the mean left out), stopping where ‖t‖ < tol, the moved mean normalised where its norm
// exceeds tol; then scaled by every model's mean norm.
std::vector<double> karcher_coefficients(const std::vector<double>& gram, std::size_t models, i64 max_iter,
                                         double tol) {
  const auto m = static_cast<int>(models);
  std::vector<double> sums(models * models);
  for (int q = 0; q < kernels::stock_sums(m); ++q) {
    int a, b;
    kernels::stock_pair(m, q, a, b);
    sums[a * models + b] = sums[b * models + a] = gram[q];
  }
  std::vector<double> norms(models), coef(models, 0.0);
  std::vector<std::size_t> valid;
  double scale = 0;  // every model's norm counts here, the vanishing ones too (as mergekit)
  for (std::size_t i = 0; i < models; ++i) {
    norms[i] = std::sqrt(sums[i * models + i]);
    if (norms[i] > tol) valid.push_back(i);
    scale += (1.0 / double(models)) * norms[i];
  }
  if (valid.empty()) return coef;
  const std::size_t n = valid.size();
  std::vector<double> g(n * n);
  for (std::size_t v = 0; v < n; ++v)
    for (std::size_t w = 0; w < n; ++w)
      g[v * n + w] = sums[valid[v] * models + valid[w]] / (norms[valid[v]] * norms[valid[w]]);
  const auto times = [&](const Vec& c, std::size_t v) {  // (G c)_v = u_v · Σ_w c_w u_w
    double s = 0;
    for (std::size_t w = 0; w < n; ++w) s += g[v * n + w] * c[w];
    return s;
  };
  const auto norm = [&](const Vec& c) {  // ‖Σ_v c_v u_v‖ (rounding can take a tiny square below 0)
    double s = 0;
    for (std::size_t v = 0; v < n; ++v) s += c[v] * times(c, v);
    return std::sqrt(std::max(s, 0.0));
  };
  const double a = 1.0 / double(n);
  Vec c(n, a);
  const double mn = norm(c);
  if (mn < tol) {
    std::fill(c.begin(), c.end(), 0.0);
    c[0] = 1;
  } else {
    for (auto& v : c) v /= mn;
  }
  Vec d(n), tangent(n);
  for (i64 it = 0; it < max_iter; ++it) {
    double fd = 0;
    for (std::size_t v = 0; v < n; ++v) {
      d[v] = std::clamp(times(c, v), -1.0, 1.0);
      const double theta = std::acos(d[v]);
      tangent[v] = theta < tol ? 0.0 : a * theta / std::sin(theta);
      fd += tangent[v] * d[v];
    }
    for (std::size_t v = 0; v < n; ++v) tangent[v] -= fd * c[v];
    const double tn = norm(tangent);
    if (tn < tol) break;
    for (std::size_t v = 0; v < n; ++v) c[v] = std::cos(tn) * c[v] + std::sin(tn) * (tangent[v] / tn);
    const double un = norm(c);
    if (un > tol)
      for (auto& v : c) v /= un;
  }
  for (std::size_t v = 0; v < n; ++v) coef[valid[v]] = c[v] * scale / norms[valid[v]];
  return coef;
}

KarcherSums::KarcherSums(i64 count, std::size_t models, i64 max_iter, double tol)
    : models_(models), max_iter_(max_iter), blocks_((count + kernels::kStatBlock - 1) / kernels::kStatBlock),
      tol_(tol),
      lanes_(static_cast<std::size_t>(kernels::stock_sums(static_cast<int>(models)) * blocks_ * kernels::kStatLanes),
             0.0),
      table_(models, 0.0) {}

kernels::ElementwiseStep KarcherSums::step(i64 first, i64 count, float* tasks, float* base, double* lanes) const {
  kernels::ElementwiseStep st;
  st.kind = kernels::ElementwiseKind::karcher_lanes;
  st.first = first;
  st.count = count;
  st.n = static_cast<int>(models_) - (base ? 1 : 0);
  st.x = tasks;
  st.base = base;
  st.has_base = base != nullptr;
  st.stock = lanes;
  st.stock_stride = stride();
  return st;
}

kernels::ElementwiseStep KarcherSums::blend(i64 count, float* tasks, float* base, const double* table, float* out) const {
  auto st = step(0, count, tasks, base, nullptr);
  st.kind = kernels::ElementwiseKind::karcher_blend;
  st.coef = table;
  st.out = out;
  return st;
}

void KarcherSums::end_pass() {
  std::vector<double> gram(static_cast<std::size_t>(kernels::stock_sums(static_cast<int>(models_))));
  for (std::size_t q = 0; q < gram.size(); ++q) gram[q] = kernels::lanes_total(lanes_.data() + q * stride(), blocks_);
  table_ = karcher_coefficients(gram, models_, max_iter_, tol_);
  summed_ = true;
}

std::unique_ptr<PieceMerger> spherical_merger(const ClassicMergeOptions& o, const std::string& name,
                                              const std::vector<i64>& shape, std::size_t n, bool has_base) {
  if (o.method == ClassicMethod::nuslerp) {
    i64 numel = 1;
    for (const auto d : shape) numel *= d;
    return std::make_unique<NuslerpPieces>(nuslerp_plan(o, name, shape), numel);
  }
  if (o.method == ClassicMethod::multislerp) {
    if (n == 1) return std::make_unique<OneModelPieces>();
    i64 numel = 1;
    for (const auto d : shape) numel *= d;
    return std::make_unique<MultislerpPieces>(numel, spherical_weights(o, name), o.eps.value_or(1e-8), name);
  }
  i64 numel = 1;
  for (const auto d : shape) numel *= d;
  if (n + (has_base ? 1 : 0) == 1) return std::make_unique<OneModelPieces>();  // the one model itself
  return std::make_unique<KarcherPieces>(n + (has_base ? 1 : 0), o.max_iter.value_or(10), o.tol.value_or(1e-5), numel);
}

}  // namespace revmerge
