// The ways TensorOnBackend (tensor_on_backend.hpp) merges a tensor: each a pass or two of
// kernels/elementwise.hpp steps over the pieces, what decides from their statistics on the host
// (the CPU merge's own code: the same bits), then the merged pieces to the sink.
#include <algorithm>
#include <tuple>

#include "backend/backend.hpp"
#include "kernels/elementwise.hpp"
#include "methods/classic/backend_arrays.hpp"
#include "methods/classic/combine.hpp"
#include "methods/classic/rank_select.hpp"
#include "methods/classic/thinning.hpp"
#include "methods/classic/thinning_on_backend.hpp"
#include "methods/classic/tensor_on_backend.hpp"
#include "revmerge/error.hpp"

namespace revmerge {

using i64 = std::int64_t;
using kernels::ElementwiseKind;
using kernels::ElementwiseStep;
using backend_arrays::as;
using backend_arrays::fetch;
using backend_arrays::filled;

// slerp: a pass for its sums, then the blend; nearswap: element by element.
void TensorOnBackend::blend_two_models() {
  const double t = two_model_t(o, name);
  ElementwiseStep step;
  step.base = as<float>(s.base);
  step.x = task(0);
  if (o.method == ClassicMethod::slerp) {
    SlerpSums sums(numel);
    const DeviceBuffer lanes = filled(b, sums.lane_count() * 8, 0, s.stream);
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      b.elementwise(sums.step(first, count, as<float>(s.base), task(0), as<double>(lanes)), s.stream);
    }
    fetch(b, s.stream, lanes, sums.lanes());
    step.kind = ElementwiseKind::blend;
    std::tie(step.s0, step.s1) = sums.coefficients(t);
  } else {
    step.kind = ElementwiseKind::nearswap;
    step.t = t;
  }
  for (i64 first = 0; first < numel; first += piece) {
    if (!one_piece) read(first);
    emit(step, first);
  }
}

// nuslerp: the sums of each vector, its coefficients from the host, then the blend.
void TensorOnBackend::nuslerp() {
  float* base = src.base ? as<float>(s.base) : nullptr;
  const i64 vectors = along.layout == 0 ? 1 : along.layout == 1 ? piece / row : row;
  const i64 lanes = along.layout == 0 ? (numel + kernels::kStatBlock - 1) / kernels::kStatBlock * kernels::kStatLanes
                                      : vectors;
  const DeviceBuffer sums = filled(b, static_cast<std::size_t>(3 * lanes) * 8, 0, s.stream);
  const DeviceBuffer coef = b.allocate(static_cast<std::size_t>(4 * vectors) * 8);
  double* at[3] = {as<double>(sums), as<double>(sums) + lanes, as<double>(sums) + 2 * lanes};
  std::vector<double> host_sums(static_cast<std::size_t>(3 * lanes)), host_coef(static_cast<std::size_t>(4 * vectors));
  // host_coef from the sums of `count` vectors, uploaded.
  const auto coefficients = [&](i64 count) {
    fetch(b, s.stream, sums, host_sums);
    for (i64 v = 0; v < count; ++v) {
      const auto c = nuslerp_coefficients(along.t, host_sums[v], host_sums[lanes + v], host_sums[2 * lanes + v]);
      std::copy(c.begin(), c.end(), host_coef.begin() + 4 * v);
    }
    b.upload(coef.data(), host_coef.data(), static_cast<std::size_t>(4 * count) * 8, s.stream);
  };
  if (along.layout != 1) {  // a pass for the tensor's or the columns' sums
    const auto kind = along.layout == 0 ? ElementwiseKind::pair_lanes : ElementwiseKind::pair_columns;
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      b.elementwise(nuslerp_step(kind, along, first, count, as<float>(s.stack), base, at, nullptr, nullptr), s.stream);
    }
    if (along.layout == 0) {
      fetch(b, s.stream, sums, host_sums);
      const i64 blocks = lanes / kernels::kStatLanes;
      const auto c = nuslerp_coefficients(along.t, kernels::lanes_total(host_sums.data(), blocks),
                                          kernels::lanes_total(host_sums.data() + lanes, blocks),
                                          kernels::lanes_total(host_sums.data() + 2 * lanes, blocks));
      std::copy(c.begin(), c.end(), host_coef.begin());
      b.upload(coef.data(), host_coef.data(), 4 * 8, s.stream);
    } else {
      coefficients(vectors);
    }
  }
  for (i64 first = 0; first < numel; first += piece) {
    if (!one_piece) read(first);
    if (along.layout == 1) {  // each row's sums, then its coefficients
      b.elementwise(nuslerp_step(ElementwiseKind::pair_rows, along, first, count, as<float>(s.stack), base, at,
                                 nullptr, nullptr),
                    s.stream);
      coefficients(count / row);
    }
    emit(nuslerp_step(ElementwiseKind::pair_blend, along, first, count, as<float>(s.stack), base, at,
                      as<double>(coef), nullptr),
         first);
  }
}

// multislerp and karcher: one pass for the Gram sums, the coefficients decided on the host.
void TensorOnBackend::sphere() {
  float* base = src.base ? as<float>(s.base) : nullptr;
  SphereSums sums = sphere_sums(o, name, numel, s.n, base != nullptr);
  const std::vector<double> itself{1.0};  // one vector: the model itself (as mergekit)
  if (sums.vectors() > 1) {
    const DeviceBuffer lanes = filled(b, sums.lane_count() * 8, 0, s.stream);
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      b.elementwise(sums.step(first, count, as<float>(s.stack), base, as<double>(lanes)), s.stream);
    }
    fetch(b, s.stream, lanes, sums.lanes());
    sums.end_pass();
  }
  const auto& coef = sums.vectors() > 1 ? sums.table() : itself;
  const DeviceBuffer table = b.allocate(coef.size() * 8);
  b.upload(table.data(), coef.data(), coef.size() * 8, s.stream);
  for (i64 first = 0; first < numel; first += piece) {
    if (!one_piece) read(first);
    emit(sums.blend(count, as<float>(s.stack), base, as<double>(table), nullptr), first);
  }
}

// passthrough: the model's values, scaled.
void TensorOnBackend::passthrough() {
  const double scale = task_parameters(o, 1).scales[0];
  for (i64 first = 0; first < numel; first += piece) {
    if (!one_piece) read(first);
    emit(passthrough_step(task(0), count, scale, nullptr), first);
  }
}

// model_stock: one angle for the tensor (a pass for its sums), or one per row.
void TensorOnBackend::stock() {
  const auto models = as<float>(s.stack);
  double t = 0;
  DeviceBuffer row_t;
  if (row == 0) {
    StockSums sums(numel, s.n);
    const DeviceBuffer lanes = filled(b, sums.lane_count() * 8, 0, s.stream);
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      b.elementwise(sums.step(first, count, as<float>(s.base), models, as<double>(lanes)), s.stream);
    }
    fetch(b, s.stream, lanes, sums.lanes());
    t = sums.t();
  } else {
    row_t = b.allocate(static_cast<std::size_t>(piece / row) * 8);
  }
  for (i64 first = 0; first < numel; first += piece) {
    if (!one_piece) read(first);
    if (row > 0)
      b.elementwise(stock_step(ElementwiseKind::stock_rows, static_cast<int>(n), count, as<float>(s.base), models, 0,
                               row, as<double>(row_t), nullptr),
                    s.stream);
    emit(stock_step(ElementwiseKind::stock_blend, static_cast<int>(n), count, as<float>(s.base), models, t, row,
                    row > 0 ? as<double>(row_t) : nullptr, nullptr),
         first);
  }
}

// arcee_fusion: the rows' divergences, radix passes for the quartiles (the host decides), the blend.
void TensorOnBackend::fusion() {
  if (!src.base) throw usage_error("tensor '" + name + "': --method arcee_fusion needs the base's tensor");
  const DeviceBuffer kl = b.allocate(static_cast<std::size_t>(numel / row) * 8);  // the tensor's rows
  ElementwiseStep step;
  step.base = as<float>(s.base);
  step.row = row;
  const auto at = [&](i64 first) {
    step.first = first;
    step.count = count;
    step.x = task(0);
    step.row_t = as<double>(kl) + first / row;
  };
  const auto ranks = fusion_ranks(numel);
  RankSelect select(ranks);
  // Pass 0: one histogram of the high digits; then one per quartile, of the importances under
  // its digits so far.
  const DeviceBuffer histograms = b.allocate(ranks.size() * 65536 * 8);
  std::vector<std::uint64_t> host(ranks.size() * 65536);
  while (select.wants_pass()) {
    const int digit = select.digit();
    const std::size_t count_of = digit == 0 ? 1 : ranks.size();
    b.fill(histograms.data(), 0, count_of * 65536 * 8, s.stream);
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      at(first);
      if (digit == 0) {
        step.kind = ElementwiseKind::fusion_rows;
        b.elementwise(step, s.stream);
      }
      step.kind = ElementwiseKind::fusion_histogram;
      step.multi_pass = digit;
      for (std::size_t r = 0; r < count_of; ++r) {
        step.histogram = as<std::uint64_t>(histograms) + r * 65536;
        step.prefix = digit == 0 ? 0 : select.prefix(r);
        b.elementwise(step, s.stream);
      }
    }
    b.download(host.data(), histograms.data(), count_of * 65536 * 8, s.stream);  // one wait a pass
    b.synchronize(s.stream);
    for (std::size_t r = 0; r < count_of; ++r)
      select.add_histogram(r, std::span<const std::uint64_t>(host).subspan(r * 65536, 65536));
    select.end_pass();
  }
  step.kind = ElementwiseKind::fusion_blend;
  step.threshold = fusion_threshold(select.value(0), select.value(1), select.value(2));
  for (i64 first = 0; first < numel; first += piece) {
    if (!one_piece) read(first);
    at(first);
    emit(step, first);
  }
}

// ram and ramplus_tl: for ramplus_tl a pass counting each task's shared and unique changes, its
// factors from them on the host; then every element merged (ram: every factor 1).
void TensorOnBackend::ram() {
  const RamParameters p = ram_parameters(o, name);
  ElementwiseStep step;
  step.n = static_cast<int>(n);
  step.x = as<float>(s.stack);
  step.base = as<float>(s.base);
  step.epsilon = p.epsilon;
  std::vector<double> scales(s.n, 1.0);
  if (p.plus) {
    const DeviceBuffer counts = filled(b, 2 * s.n * 8, 0, s.stream);
    step.kind = ElementwiseKind::ram_counts;
    step.counts = as<std::uint64_t>(counts);
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      step.first = first;
      step.count = count;
      b.elementwise(step, s.stream);
    }
    std::vector<std::uint64_t> host(2 * s.n);
    fetch(b, s.stream, counts, host);
    for (std::size_t t = 0; t < s.n; ++t)
      scales[t] = ram_scale(p, static_cast<double>(host[2 * t]), static_cast<double>(host[2 * t + 1]));
  }
  b.upload(s.weights.data(), scales.data(), s.n * 8, s.stream);
  b.synchronize(s.stream);  // the factors are this frame's memory
  step.kind = ElementwiseKind::ram_blend;
  step.weights = as<double>(s.weights);
  for (i64 first = 0; first < numel; first += piece) {
    if (!one_piece) read(first);
    emit(step, first);
  }
}

// The element-wise methods: each task thinned (thinning.hpp's passes, their decisions on the
// host), then combined; SCE's selection instead where the recipe selects by variance.
void TensorOnBackend::combine_tasks() {
  const auto recipe = make_recipe(o, Convention::mergekit);
  const auto params = task_parameters(o, s.n);
  ElementwiseStep combine;
  combine.kind = ElementwiseKind::combine;
  combine.n = static_cast<int>(n);
  combine.weights = as<double>(s.weights);
  combine.weight_sum = combine_weight_sum(params.weights);
  combine.lambda = recipe.lambda;
  combine.elect = recipe.elect_sign;
  combine.elect_by_count = recipe.election == SignElection::count;
  combine.elect_on_weighted = recipe.elect_on_weighted;
  combine.normalize = recipe.normalize;
  combine.has_base = src.base != nullptr;
  combine.base = as<float>(s.base);
  combine.x = as<float>(s.stack);

  if (recipe.select_by_variance) return select_by_variance(combine);
  const CombineInput ci{{}, n, numel, params.weights, params.densities, name, o.seed, params.gammas, params.epsilons, shape};
  std::vector<Thinning> thinning;
  thinning.reserve(s.n);
  for (i64 t = 0; t < n; ++t) thinning.emplace_back(thinning_spec(recipe, ci, t), numel);
  if (della && s.keep.bytes() < static_cast<std::size_t>(piece)) s.keep = b.allocate(static_cast<std::size_t>(s.piece));
  std::vector<ThinningOnBackend> on;
  on.reserve(s.n);
  for (auto& th : thinning) on.emplace_back(th, b, s.stream, as<unsigned char>(s.keep));
  b.upload(s.weights.data(), params.weights.data(), s.n * 8, s.stream);
  b.synchronize(s.stream);  // the weights are the caller's memory
  const auto wanting = [&] {
    return std::any_of(thinning.begin(), thinning.end(), [](const Thinning& th) { return th.wants_pass(); });
  };
  while (wanting()) {
    std::vector<bool> wants(s.n);
    for (std::size_t t = 0; t < s.n; ++t) wants[t] = thinning[t].wants_pass();
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      for (i64 t = 0; t < n; ++t)
        if (wants[t]) on[t].observe(task(t), first, count);
    }
    for (std::size_t t = 0; t < s.n; ++t)
      if (wants[t]) on[t].end_pass();
  }
  for (i64 first = 0; first < numel; first += piece) {
    if (!one_piece) read(first);
    for (i64 t = 0; t < n; ++t) on[t].apply(task(t), first, count, s.ties, s.allowances);
    emit(combine, first);
  }
}

// SCE (sce.cpp's passes, its decisions on the host).
void TensorOnBackend::select_by_variance(ElementwiseStep combine) {
  const double topk = o.select_topk.value_or(1.0);
  const i64 blocks = (numel + kernels::kStatBlock - 1) / kernels::kStatBlock;
  ElementwiseStep st;
  st.n = static_cast<int>(n);
  st.x = as<float>(s.stack);
  const auto pass = [&](ElementwiseStep step) {
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      step.first = first;
      step.count = count;
      b.elementwise(step, s.stream);
    }
  };
  // The selection: the variance at rank numel − keep by four radix passes, then its ties per
  // block, walked in index order (tie_allowances).
  bool keep_all = topk >= 1, zero_all = false;
  std::vector<i64> left;
  if (!keep_all) {
    RankSelect select;
    const DeviceBuffer histogram = b.allocate(65536 * 8), nonzero = filled(b, 8, 0, s.stream);
    std::vector<std::uint64_t> host(65536), counted(1);
    i64 keep = 0;
    st.kind = ElementwiseKind::sce_lanes;
    st.histogram = as<std::uint64_t>(histogram);
    st.counts = as<std::uint64_t>(nonzero);
    while (select.wants_pass()) {
      b.fill(histogram.data(), 0, 65536 * 8, s.stream);
      st.sce_pass = select.digit();
      st.prefix = select.digit() == 0 ? 0 : select.prefix(0);
      pass(st);
      fetch(b, s.stream, histogram, host);
      select.add_histogram(0, host);
      if (select.digit() == 0) {
        fetch(b, s.stream, nonzero, counted);
        keep = topk <= 0 ? 0 : static_cast<i64>(static_cast<double>(counted[0]) * topk);
        if (keep <= 0 || keep >= numel) break;  // none or all: nothing to select
        select.ranks({numel - keep});
      }
      select.end_pass();
    }
    keep_all = keep >= numel;
    zero_all = keep <= 0;
    if (!keep_all && !zero_all) {
      st.threshold = select.value(0);
      const DeviceBuffer equal = filled(b, static_cast<std::size_t>(blocks) * 8, 0, s.stream);
      st.sce_pass = 4;
      st.equal[0] = as<std::uint64_t>(equal);
      pass(st);
      std::vector<i64> ties(static_cast<std::size_t>(blocks));
      fetch(b, s.stream, equal, ties);
      left = tie_allowances(ties, keep - (numel - select.below(0) - select.equal(0)));
    }
  }
  const DeviceBuffer allowances = b.allocate(std::max<std::size_t>(left.size(), 1) * 8);
  // Zeroes the elements the piece at `first` does not keep, in every task (the tensor's
  // allowances from the start at its first piece).
  const auto select = [&](i64 first) {
    if (keep_all) return;
    ElementwiseStep sel = st;
    sel.first = first;
    sel.count = count;
    sel.zero_all = zero_all;
    if (!zero_all) {
      if (first == 0) b.upload(allowances.data(), left.data(), left.size() * 8, s.stream);
      sel.rules = 1;
      sel.chunk_ties[0] = as<i64>(s.ties[0]);
      sel.chunk_left[0] = as<i64>(s.allowances[0]);
      sel.left[0] = as<i64>(allowances);
      for (const auto kind : {ElementwiseKind::sce_ties, ElementwiseKind::tie_scan}) {
        sel.kind = kind;
        b.elementwise(sel, s.stream);
      }
    }
    sel.kind = ElementwiseKind::sce_select;
    b.elementwise(sel, s.stream);
  };
  // The weights: each task's Σ x² over the kept elements, in the blocks' lanes.
  const DeviceBuffer lanes = filled(b, static_cast<std::size_t>(n * blocks * kernels::kStatLanes) * 8, 0, s.stream);
  ElementwiseStep energy = st;
  energy.kind = ElementwiseKind::sce_lanes;
  energy.sce_pass = 5;
  energy.stock = as<double>(lanes);
  energy.stock_stride = blocks * kernels::kStatLanes;
  for (i64 first = 0; first < numel; first += piece) {
    if (!one_piece) read(first);
    select(first);
    energy.first = first;
    energy.count = count;
    b.elementwise(energy, s.stream);
  }
  std::vector<double> host_lanes(static_cast<std::size_t>(n * blocks * kernels::kStatLanes)), squares;
  fetch(b, s.stream, lanes, host_lanes);
  for (i64 t = 0; t < n; ++t) squares.push_back(kernels::lanes_total(host_lanes.data() + t * energy.stock_stride, blocks));
  const auto weights = energy_weights(squares, numel);
  b.upload(s.weights.data(), weights.data(), s.n * 8, s.stream);
  b.synchronize(s.stream);  // the weights are this frame's memory
  combine.weight_sum = combine_weight_sum(weights);
  for (i64 first = 0; first < numel; first += piece) {
    if (!one_piece) {  // a tensor in one piece was selected in the energy pass
      read(first);
      select(first);
    }
    emit(combine, first);
  }
}

}  // namespace revmerge
