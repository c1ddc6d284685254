// ThinningOnBackend (thinning_on_backend.hpp): Thinning's passes as element-wise steps on a
// backend, its statistics brought over at each pass's end.
#include "methods/classic/thinning_on_backend.hpp"

#include <algorithm>

#include "methods/classic/backend_arrays.hpp"

namespace revmerge {

using i64 = std::int64_t;
using backend_arrays::as;
using backend_arrays::fetch;
using backend_arrays::filled;
using kernels::ElementwiseKind;
using kernels::ElementwiseStep;

ThinningOnBackend::ThinningOnBackend(Thinning& th, Backend& b, Stream s, unsigned char* keep)
    : th_(th), b_(b), s_(s), keep_(keep) {
  if (!th.active_ || th.zero_all_) return;
  const i64 blocks = (th.count_ + kernels::kStatBlock - 1) / kernels::kStatBlock;
  const auto lanes = static_cast<std::size_t>(blocks * kernels::kStatLanes) * 8;
  if (!th.high_.empty()) high_ = filled(b, 65536 * 8, 0, s);
  if (!th.before_.empty()) before_ = filled(b, lanes, 0, s);
  if (!th.after_.empty()) after_ = filled(b, lanes, 0, s);
  for (const auto& r : th.rules_) {
    RuleBuffers rb;
    rb.left = filled(b, static_cast<std::size_t>(blocks) * 8, 0, s);
    if (!r.trivial) {
      rb.low = filled(b, 65536 * 8, 0, s);
      rb.equal = filled(b, static_cast<std::size_t>(blocks) * 8, 0, s);
      if (th.spec_.rescale == Rescale::l1) rb.above = filled(b, lanes, 0, s);  // the kept L1
    }
    rules_.push_back(std::move(rb));
  }
}

void ThinningOnBackend::set_rules(ElementwiseStep& st) const {
  st.rules = static_cast<int>(th_.rules_.size());
  for (std::size_t r = 0; r < th_.rules_.size(); ++r) {
    const auto& rule = th_.rules_[r];
    st.rule[r] = {rule.trivial, rule.k > 0, rule.threshold, rule.hi};
  }
}

void ThinningOnBackend::observe(float* x, i64 first, i64 count) {
  ElementwiseStep st;
  st.first = first;
  st.count = count;
  st.x = x;
  switch (th_.stages_.at(th_.pass_)) {
    case Thinning::Stage::high_bits:
      st.kind = ElementwiseKind::histogram;
      st.histogram = as<std::uint64_t>(high_);
      b_.elementwise(st, s_);
      if (before_.data()) lanes(st, true, false, false);
      break;
    case Thinning::Stage::low_bits:
      st.kind = ElementwiseKind::histogram;
      set_rules(st);
      for (std::size_t r = 0; r < rules_.size(); ++r) {
        if (th_.rules_[r].trivial) continue;
        st.low_of = static_cast<int>(r);
        st.histogram = as<std::uint64_t>(rules_[r].low);
        b_.elementwise(st, s_);
      }
      break;
    case Thinning::Stage::equal_counts:
      lanes(st, false, false, true);
      break;
    case Thinning::Stage::norms: {
      const bool drop = th_.spec_.kind == Sparsify::random || th_.spec_.kind == Sparsify::della;
      if (th_.spec_.kind == Sparsify::della) st.keep = della_keep(x, first, count);
      lanes(st, true, drop, false);
      break;
    }
  }
}

void ThinningOnBackend::end_pass() {
  switch (th_.stages_.at(th_.pass_)) {
    case Thinning::Stage::high_bits:
      fetch(b_, s_, high_, th_.high_);
      if (before_.data()) fetch(b_, s_, before_, th_.before_);
      break;
    case Thinning::Stage::low_bits:
      for (std::size_t r = 0; r < rules_.size(); ++r)
        if (!th_.rules_[r].trivial) fetch(b_, s_, rules_[r].low, th_.rules_[r].low);
      break;
    case Thinning::Stage::equal_counts:
      for (std::size_t r = 0; r < rules_.size(); ++r) {
        if (th_.rules_[r].trivial) continue;
        fetch(b_, s_, rules_[r].equal, th_.rules_[r].equal);
        if (rules_[r].above.data()) fetch(b_, s_, rules_[r].above, th_.rules_[r].above_sum);
      }
      break;
    case Thinning::Stage::norms:
      fetch(b_, s_, before_, th_.before_);
      if (after_.data()) fetch(b_, s_, after_, th_.after_);
      break;
  }
  th_.end_pass();
  if (th_.wants_pass()) return;
  for (std::size_t r = 0; r < rules_.size(); ++r)  // the ties each block allows, for apply
    if (!th_.rules_[r].trivial)
      b_.upload(rules_[r].left.data(), th_.rules_[r].left.data(), th_.rules_[r].left.size() * 8,
                s_);
}

void ThinningOnBackend::apply(float* x, i64 first, i64 count, const DeviceBuffer* ties,
                              const DeviceBuffer* allowances) {
  if (!th_.active_) return;
  ElementwiseStep st;
  st.first = first;
  st.count = count;
  st.x = x;
  st.factor = th_.factor_;
  if (th_.zero_all_ || th_.spec_.kind == Sparsify::random || th_.spec_.kind == Sparsify::della) {
    if (!th_.zero_all_ && th_.spec_.kind == Sparsify::della) st.keep = della_keep(x, first, count);
    st.kind = ElementwiseKind::drop;
    st.zero_all = th_.zero_all_;
    st.seed = th_.spec_.seed;
    st.stream = th_.spec_.stream;
    st.limit = kernels::CounterThreshold::limit(th_.spec_.density);
    b_.elementwise(st, s_);
    return;
  }
  set_rules(st);
  for (std::size_t r = 0; r < rules_.size(); ++r) {
    st.chunk_ties[r] = as<i64>(ties[r]);
    st.chunk_left[r] = as<i64>(allowances[r]);
    st.left[r] = as<i64>(rules_[r].left);
  }
  for (const auto kind :
       {ElementwiseKind::tie_counts, ElementwiseKind::tie_scan, ElementwiseKind::trim}) {
    st.kind = kind;
    b_.elementwise(st, s_);
  }
}

void ThinningOnBackend::lanes(ElementwiseStep st, bool abs, bool kept, bool rules) {
  st.kind = ElementwiseKind::lane_stats;
  if (abs) st.before = as<double>(before_);
  if (kept) {
    st.after = as<double>(after_);
    st.seed = th_.spec_.seed;
    st.stream = th_.spec_.stream;
    st.limit = kernels::CounterThreshold::limit(th_.spec_.density);
  }
  if (rules) {
    set_rules(st);
    for (std::size_t r = 0; r < rules_.size(); ++r) {
      st.equal[r] = as<std::uint64_t>(rules_[r].equal);
      st.above[r] = as<double>(rules_[r].above);
    }
  }
  b_.elementwise(st, s_);
}

unsigned char* ThinningOnBackend::della_keep(float* x, i64 first, i64 count) {
  const auto& shape = th_.spec_.shape;
  ElementwiseStep st;
  st.kind = ElementwiseKind::della_keep;
  st.first = first;
  st.count = count;
  st.x = x;
  st.keep = keep_;
  st.row = shape.size() >= 2 ? shape[1] : th_.count_;
  st.inner = th_.granule_ / std::max<i64>(st.row, 1);
  st.density = th_.spec_.density;
  st.epsilon = th_.spec_.epsilon;
  st.seed = th_.spec_.seed;
  st.stream = th_.spec_.stream;
  if (st.row > 0 && st.inner > 0) b_.elementwise(st, s_);
  return keep_;
}

}  // namespace revmerge
