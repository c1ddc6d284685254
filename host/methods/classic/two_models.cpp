// mergekit's methods that blend the base (v0) with one fine-tune (v1) by a parameter t, on full
// models, each floating-point tensor on its own:
//  - slerp: the tensor taken as a single vector, interpolated along the great circle between
//    the two directions: cos θ = (v0 / ‖v0‖) · (v1 / ‖v1‖),
//    W = sin((1 − t) θ) / sin θ · v0 + sin(t θ) / sin θ · v1, and linearly,
//    W = (1 − t) v0 + t v1, where |cos θ| > 0.9995 (nearly parallel: the sines vanish). Norms at
//    or below 1e-8 are not divided by (mergekit's normalize).
//  - nearswap: element by element, w = clamp(t / max(|v0 − v1|, 1e-6), 0, 1),
//    W = w v1 + (1 − w) v0: elements that differ by less than t take the fine-tune's value,
//    the others move toward it by t / |v0 − v1|.
// mergekit computes in f32 (slerp) or the tensors' dtype (nearswap); revmerge in f64, rounded
// once.
#include <algorithm>
#include <cmath>

#include "methods/classic/piece_merge.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

constexpr double kDotThreshold = 0.9995;  // mergekit's DOT_THRESHOLD
constexpr double kNormEps = 1e-8;         // mergekit's eps
constexpr double kDifferenceFloor = 1e-6; // mergekit's nearswap clamp

// SLERP's sums over the tensor, added in index order (piece after piece).
struct SlerpSums {
  double n0 = 0, n1 = 0, d = 0;
  void add(std::span<const float> v0, std::span<const float> v1) {
    for (std::size_t i = 0; i < v0.size(); ++i) {
      n0 += double(v0[i]) * v0[i];
      n1 += double(v1[i]) * v1[i];
      d += double(v0[i]) * v1[i];
    }
  }
  // The two coefficients (s0, s1) of W = s0 v0 + s1 v1.
  std::pair<double, double> coefficients(double t) const {
    const double r0 = std::sqrt(n0), r1 = std::sqrt(n1);
    const double dot = d / (r0 > kNormEps ? r0 : 1.0) / (r1 > kNormEps ? r1 : 1.0);
    if (std::fabs(dot) > kDotThreshold) return {1 - t, t};
    const double theta = std::acos(dot), s = std::sin(theta);
    return {std::sin(theta - theta * t) / s, std::sin(theta * t) / s};
  }
};

void nearswap(double t, std::span<const float> v0, std::span<const float> v1, std::span<float> out) {
  for (std::size_t i = 0; i < out.size(); ++i) {
    // mergekit divides by the difference floored at 1e-6 (so equal elements take v1 for any
    // t ≥ 1e-6).
    const double d = std::max(std::fabs(double(v0[i]) - v1[i]), kDifferenceFloor);
    const double w = std::min(1.0, t / d);
    out[i] = static_cast<float>(w * v1[i] + (1 - w) * v0[i]);
  }
}

}  // namespace

namespace {

double checked_t(ClassicMethod m, std::optional<double> t, const std::string& where) {
  const bool slerp = m == ClassicMethod::slerp;
  const std::string method = "--method " + to_string(m);
  if (!t)
    throw usage_error("--t: " + method + (slerp ? " needs t (0 gives the base, 1 the fine-tune)"
                                                : " needs t (the difference below which an element takes the fine-tune's value)") + where);
  if (!std::isfinite(*t)) throw usage_error("--t: must be a finite number" + where);
  if (!slerp && *t <= 0) throw usage_error("--t: nearswap's threshold must be above 0" + where);
  return *t;
}

}  // namespace

void check_two_model_options(const ClassicMergeOptions& o) {
  if (o.tasks.size() != 1)
    throw usage_error("--method " + to_string(o.method) + " blends the base and one fine-tune; got " +
                      std::to_string(o.tasks.size()) + " models besides the base");
  if (!is_set_per_tensor(o, "t")) checked_t(o.method, o.t, "");
  refuse_weighting_options(o);
}

namespace {

// slerp in pieces: one pass for the norms and the dot product, then the blend; nearswap
// element by element.
class TwoModelPieces final : public PieceMerger {
 public:
  TwoModelPieces(ClassicMethod method, double t) : method_(method), t_(t) {}
  bool wants_pass() const override { return method_ == ClassicMethod::slerp && !summed_; }
  void observe(const TensorInputs& in, int) override { sums_.add(in.base, in.model(0)); }
  void end_pass() override { summed_ = true; }
  void produce(TensorInputs& in, std::span<float> out, int threads) override {
    const std::span<const float> v0 = in.base, v1 = in.model(0);
    if (method_ == ClassicMethod::nearswap) return nearswap(t_, v0, v1, out);
    const auto [s0, s1] = sums_.coefficients(t_);
    const auto count = static_cast<std::int64_t>(out.size());
#pragma omp parallel for num_threads(threads) schedule(static)
    for (std::int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(s0 * v0[i] + s1 * v1[i]);
  }

 private:
  ClassicMethod method_;
  double t_;
  SlerpSums sums_;
  bool summed_ = false;
};

}  // namespace

std::unique_ptr<PieceMerger> two_model_merger(const ClassicMergeOptions& o, const std::string& name) {
  return std::make_unique<TwoModelPieces>(o.method, checked_t(o.method, o.t, " (tensor '" + name + "')"));
}

}  // namespace revmerge
