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
#include <cstring>
#include <tuple>

#include "kernels/elementwise.hpp"
#include "methods/classic/lanes8.hpp"
#include "methods/classic/piece_merge.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

constexpr double kDotThreshold = 0.9995;  // mergekit's DOT_THRESHOLD
constexpr double kNormEps = 1e-8;         // mergekit's eps

// A per-element step of the two models' pieces v0 (the base) and v1 into out.
kernels::ElementwiseStep element_step(kernels::ElementwiseKind kind, std::span<const float> v0,
                                      std::span<const float> v1, std::span<float> out) {
  kernels::ElementwiseStep st;
  st.kind = kind;
  st.count = static_cast<std::int64_t>(out.size());
  st.base = const_cast<float*>(v0.data());  // read only
  st.x = const_cast<float*>(v1.data());
  st.out = out.data();
  return st;
}

}  // namespace

SlerpSums::SlerpSums(std::int64_t count)
    : blocks_((count + kernels::kStatBlock - 1) / kernels::kStatBlock),
      lanes_(static_cast<std::size_t>(3 * blocks_ * kernels::kStatLanes), 0.0) {}

kernels::ElementwiseStep SlerpSums::step(std::int64_t first, std::int64_t count, float* v0, float* v1,
                                         double* lanes) const {
  kernels::ElementwiseStep st;
  st.kind = kernels::ElementwiseKind::dot_lanes;
  st.first = first;
  st.count = count;
  st.base = v0;
  st.x = v1;
  for (int k = 0; k < 3; ++k) st.sums[k] = lanes + k * blocks_ * kernels::kStatLanes;
  return st;
}

namespace {

// dot_lanes over elements [a, a + m) of the tensor (v0 and v1 hold them) on this thread, eight
// lanes at a time: each lane still adds its elements in index order (the same bits as the
// step, whose indices are lanes). Compiled per instruction set.
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void dot_lanes_run(double* n0, double* n1, double* d, std::int64_t a, const float* v0, const float* v1,
                   std::int64_t m) {
  constexpr std::int64_t L = kernels::kStatLanes;
  const std::int64_t end = a + m;
  for (std::int64_t i = a; i < end;) {
    const std::int64_t block = i / kernels::kStatBlock;
    const std::int64_t block_end = std::min(end, (block + 1) * kernels::kStatBlock);
    double* s0 = n0 + block * L;
    double* s1 = n1 + block * L;
    double* s2 = d + block * L;
    const auto one = [&](std::int64_t e) {
      const double x = v0[e - a], y = v1[e - a];
      const std::int64_t l = e % L;
      s0[l] += x * x;
      s1[l] += y * y;
      s2[l] += x * y;
    };
    for (; i < block_end && i % L != 0; ++i) one(i);
    // The eight lanes as one vector (GCC's vector types: the compiler left the lane loop scalar).
    Lanes t0, t1, t2;
    std::memcpy(&t0, s0, sizeof t0);
    std::memcpy(&t1, s1, sizeof t1);
    std::memcpy(&t2, s2, sizeof t2);
    for (; i + L <= block_end; i += L) {
      Lanes x, y;
      widen8(x, v0 + (i - a));
      widen8(y, v1 + (i - a));
      t0 += x * x;
      t1 += y * y;
      t2 += x * y;
    }
    std::memcpy(s0, &t0, sizeof t0);
    std::memcpy(s1, &t1, sizeof t1);
    std::memcpy(s2, &t2, sizeof t2);
    for (; i < block_end; ++i) one(i);
  }
}

// A per-element step's indices [begin, end) on this thread, compiled per instruction set (the
// shared routine's operations in its order: the same bits as the step on any backend).
template <kernels::ElementwiseKind K>
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void element_run(const kernels::ElementwiseStep& step, std::int64_t begin, std::int64_t end) {
  const kernels::ElementwiseStep s = step;
  for (std::int64_t j = begin; j < end; ++j) kernels::elementwise_index_of<K>(s, j);
}

}  // namespace

void SlerpSums::add_run(std::int64_t first, const float* v0, const float* v1, std::int64_t count) {
  const std::int64_t stride = blocks_ * kernels::kStatLanes;
  dot_lanes_run(lanes_.data(), lanes_.data() + stride, lanes_.data() + 2 * stride, first, v0, v1, count);
}

std::pair<double, double> SlerpSums::coefficients(double t) const {
  double sum[3];
  for (int k = 0; k < 3; ++k) sum[k] = kernels::lanes_total(lanes_.data() + k * blocks_ * kernels::kStatLanes, blocks_);
  const double r0 = std::sqrt(sum[0]), r1 = std::sqrt(sum[1]);
  const double dot = sum[2] / (r0 > kNormEps ? r0 : 1.0) / (r1 > kNormEps ? r1 : 1.0);
  if (std::fabs(dot) > kDotThreshold) return {1 - t, t};
  const double theta = std::acos(dot), s = std::sin(theta);
  return {std::sin(theta - theta * t) / s, std::sin(theta * t) / s};
}

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

double two_model_t(const ClassicMergeOptions& o, const std::string& name) {
  return checked_t(o.method, o.t, " (tensor '" + name + "')");
}

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
// The element-wise steps are kernels/elementwise.hpp's, the ones a backend runs.
class TwoModelPieces final : public PieceMerger {
 public:
  TwoModelPieces(ClassicMethod method, double t, std::int64_t count) : method_(method), t_(t), sums_(count) {}
  bool wants_pass() const override { return method_ == ClassicMethod::slerp && !summed_; }
  std::uint64_t held_bytes(int) const override { return sums_.lane_count() * sizeof(double); }
  void end_pass() override {
    summed_ = true;
    std::tie(s0_, s1_) = sums_.coefficients(t_);
  }
  bool works_in_runs() const override { return true; }
  void observe_run(const RunInputs& run) override { sums_.add_run(run.first, run.base, run.tasks, run.count); }
  void produce_run(const RunInputs& run, std::span<float> out) override {
    const auto count = static_cast<std::size_t>(run.count);
    const std::span<const float> v0(run.base, count), v1(run.tasks, count);
    if (method_ == ClassicMethod::nearswap) {
      auto st = element_step(kernels::ElementwiseKind::nearswap, v0, v1, out);
      st.t = t_;
      return element_run<kernels::ElementwiseKind::nearswap>(st, 0, run.count);
    }
    auto st = element_step(kernels::ElementwiseKind::blend, v0, v1, out);
    st.s0 = s0_;
    st.s1 = s1_;
    element_run<kernels::ElementwiseKind::blend>(st, 0, run.count);
  }
  // The driver merges this merger's pieces run by run (works_in_runs); a whole piece is one run.
  void produce(TensorInputs& in, std::span<float> out, int) override { produce_run(whole_run(in), out); }

 private:
  ClassicMethod method_;
  double t_;
  SlerpSums sums_;
  bool summed_ = false;
  double s0_ = 0, s1_ = 0;  // slerp's coefficients, once summed
};

}  // namespace

std::unique_ptr<PieceMerger> two_model_merger(const ClassicMergeOptions& o, const std::string& name,
                                              std::int64_t count) {
  return std::make_unique<TwoModelPieces>(o.method, two_model_t(o, name), count);
}

}  // namespace revmerge
