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
// multislerp and karcher take their maps on the vectors' coefficients, from the Gram matrix (one
// pass over the tensor; see multislerp_coefficients and karcher_coefficients in sphere_sums.cpp).
// mergekit computes in f32; revmerge in f64, rounded once.
#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

#include "kernels/elementwise.hpp"
#include "methods/classic/lanes8.hpp"
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

// The merged tensor Σ_q c_q x_q, the coefficients decided from the vectors' Gram sums taken in
// the statistics blocks' lanes (lane_dot), as the pieces and backends take them.
Vec sphere_whole(const std::vector<Vec>& x, const SphereSums::Decide& decide) {
  const auto vectors = static_cast<int>(x.size());
  std::vector<double> gram(static_cast<std::size_t>(kernels::stock_sums(vectors)));
  for (int q = 0; q < kernels::stock_sums(vectors); ++q) {
    int a, b;
    kernels::stock_pair(vectors, q, a, b);
    gram[q] = lane_dot(x[a], x[b]);
  }
  const auto coef = decide(gram);
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
    const auto w = spherical_weights(o, in.name);
    const double eps = o.eps.value_or(1e-8);
    r = x.size() == 1 ? x[0] : sphere_whole(x, [&](const std::vector<double>& gram) {
      return multislerp_coefficients(gram, w, eps, in.name);
    });
    if (x.size() == 1 && has_base)  // mergekit returns the one model itself
      for (std::size_t k = 0; k < r.size(); ++k) r[k] += b[k];
  } else {
    const i64 max_iter = o.max_iter.value_or(10);
    const double tol = o.tol.value_or(1e-5);
    r = x.size() == 1 ? x[0] : sphere_whole(x, [&](const std::vector<double>& gram) {
      return karcher_coefficients(gram, x.size(), max_iter, tol);
    });
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

// multislerp of one model beside the base, karcher of one model: the model itself (as mergekit
// returns it).
class OneModelPieces final : public PieceMerger {
 public:
  void produce(TensorInputs& in, std::span<float> out, int) override {
    for (std::size_t k = 0; k < in.count; ++k)
      out[k] = static_cast<float>(in.base.empty() ? value(in, 0, k) : value(in, 0, k) + in.base[k]);
  }
};

// gram_blend over m elements (x[q]: vector q's values, less `base`'s where it is given, and the
// base added back) into out on this thread, eight at a time: each element's terms in the step's
// order. Compiled per instruction set.
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void gram_blend_run(const double* coef, int vectors, const float* const* x, const float* base, i64 m, float* out) {
  constexpr i64 L = kernels::kStatLanes;
  i64 j = 0;
  for (; j + L <= m; j += L) {
    Lanes b = {}, r = {};
    if (base) widen8(b, base + j);
    for (int q = 0; q < vectors; ++q) {
      Lanes v;
      widen8(v, x[q] + j);
      r += coef[q] * (base ? v - b : v);
    }
    if (base) r += b;
    narrow8(out + j, r);
  }
  for (; j < m; ++j) {
    double r = 0;
    for (int q = 0; q < vectors; ++q) r += coef[q] * (base ? double(x[q][j]) - double(base[j]) : double(x[q][j]));
    out[j] = static_cast<float>(base ? r + double(base[j]) : r);
  }
}

// multislerp and karcher in pieces: one pass for the vectors' Gram sums, then the blend with the
// coefficients decided from them (SphereSums), run by run as the driver reads them:
// kernels/elementwise.hpp's gram_lanes and gram_blend (the steps a backend runs), a block's
// lanes as one vector.
class SpherePieces final : public PieceMerger {
 public:
  explicit SpherePieces(SphereSums sums) : sums_(std::move(sums)) {}
  std::uint64_t held_bytes(int) const override { return sums_.lane_count() * sizeof(double); }
  bool wants_pass() const override { return sums_.wants_pass(); }
  bool works_in_runs() const override { return true; }
  void observe_run(const RunInputs& run) override {
    const auto x = values(run);
    gram_lanes_run(sums_.lanes().data(), sums_.stride(), sums_.vectors(), run.first, x.data(), subtracted(run),
                   run.count, kernels::kStatBlock);
  }
  void end_pass() override { sums_.end_pass(); }
  void produce_run(const RunInputs& run, std::span<float> out) override {
    const auto x = values(run);
    gram_blend_run(sums_.table().data(), sums_.vectors(), x.data(), subtracted(run), run.count, out.data());
  }
  // The driver merges this merger's pieces run by run (works_in_runs); a whole piece is one run.
  void produce(TensorInputs& in, std::span<float> out, int) override { produce_run(whole_run(in), out); }

 private:
  // The vectors' values in the run: the base first, where it is one of them.
  std::vector<const float*> values(const RunInputs& run) const {
    std::vector<const float*> x;
    if (run.base && !sums_.task_vectors()) x.push_back(run.base);
    for (std::size_t t = 0; t < run.n; ++t) x.push_back(run.tasks + t * static_cast<std::size_t>(run.stride));
    return x;
  }
  const float* subtracted(const RunInputs& run) const { return sums_.task_vectors() ? run.base : nullptr; }
  SphereSums sums_;
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

std::unique_ptr<PieceMerger> spherical_merger(const ClassicMergeOptions& o, const std::string& name,
                                              const std::vector<i64>& shape, std::size_t n, bool has_base) {
  if (o.method == ClassicMethod::nuslerp) {
    i64 numel = 1;
    for (const auto d : shape) numel *= d;
    return std::make_unique<NuslerpPieces>(nuslerp_plan(o, name, shape), numel);
  }
  // One model beside the base (multislerp), or alone (karcher): the model itself.
  const bool one = o.method == ClassicMethod::multislerp ? n == 1 : n + (has_base ? 1 : 0) == 1;
  if (one) return std::make_unique<OneModelPieces>();
  i64 numel = 1;
  for (const auto d : shape) numel *= d;
  return std::make_unique<SpherePieces>(sphere_sums(o, name, numel, n, has_base));
}

}  // namespace revmerge
