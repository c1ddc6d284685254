#include "methods/classic/combine.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "kernels/counter_rng.hpp"
#include "methods/classic/lanes8.hpp"
#include "methods/classic/thinning.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

}  // namespace

CombineRecipe make_recipe(const ClassicMergeOptions& o, Convention convention) {
  const bool mk = convention == Convention::mergekit;
  CombineRecipe r;
  r.convention = convention;
  r.lambda = o.lambda.value_or(1.0);
  r.election = o.election;
  r.elect_on_weighted = mk;
  r.keep_at_least_one = mk;
  bool normalize_default = false, rescale_default = false;
  switch (o.method) {
    case ClassicMethod::linear:
      normalize_default = mk;  // mergekit's linear is a weighted average of the weights
      break;
    case ClassicMethod::task_arithmetic:
      break;
    case ClassicMethod::magnitude_prune:
      r.sparsify = Sparsify::magnitude;
      break;
    case ClassicMethod::ties:
      r.sparsify = Sparsify::magnitude;
      r.elect_sign = normalize_default = true;
      break;
    case ClassicMethod::dare_linear:
      r.sparsify = Sparsify::random;
      rescale_default = true;
      break;
    case ClassicMethod::dare_ties:
      r.sparsify = Sparsify::random;
      r.elect_sign = rescale_default = true;
      normalize_default = !mk;  // PEFT's disjoint mean; mergekit's dare_ties does not divide
      break;
    case ClassicMethod::breadcrumbs:
      r.sparsify = Sparsify::outliers;
      break;
    case ClassicMethod::breadcrumbs_ties:
      r.sparsify = Sparsify::outliers;
      r.elect_sign = true;  // mergekit's breadcrumbs_ties elects but does not divide
      break;
    case ClassicMethod::della:
      r.sparsify = Sparsify::della;
      r.elect_sign = normalize_default = rescale_default = true;
      break;
    case ClassicMethod::della_linear:
      r.sparsify = Sparsify::della;
      rescale_default = true;
      break;
    case ClassicMethod::sce:
      r.select_by_variance = r.weights_from_energy = r.elect_sign = true;
      r.elect_on_weighted = false;  // SCE elects on the task vectors themselves
      r.election = SignElection::sum;
      r.normalize = Normalize::agreeing_weight_floor;
      return r;
    case ClassicMethod::cat:
    case ClassicMethod::svd:
    case ClassicMethod::slerp:
    case ClassicMethod::nearswap:
    case ClassicMethod::model_stock:
    case ClassicMethod::nuslerp:
    case ClassicMethod::multislerp:
    case ClassicMethod::karcher:
    case ClassicMethod::ram:
    case ClassicMethod::ramplus_tl:
    case ClassicMethod::arcee_fusion:
    case ClassicMethod::passthrough:
      throw usage_error("--method " + to_string(o.method) + " is not an element-wise method");
  }
  // mergekit rescales after any sparsification, to the task's L1 norm; PEFT only after DARE's
  // drop, by 1 / density.
  if (r.sparsify != Sparsify::none && o.rescale.value_or(rescale_default)) {
    if (mk) r.rescale = Rescale::l1;
    else if (r.sparsify == Sparsify::random) r.rescale = Rescale::inverse_density;
    else throw usage_error("--rescale: PEFT's " + to_string(o.method) + " does not rescale (only DARE does)");
  }
  if (o.normalize.value_or(normalize_default))
    r.normalize = !r.elect_sign ? Normalize::weight_sum
                  : mk          ? Normalize::agreeing_weight
                                : Normalize::agreeing_count;
  return r;
}

double combine_weight_sum(std::span<const double> w) {
  double sum = 0;
  for (const double v : w) sum += v;
  return std::fabs(sum) < 1e-8 ? 1.0 : sum;
}

double element_variance(const float* x, i64 n, i64 count, i64 j) {
  return kernels::element_variance(x, static_cast<int>(n), count, j);  // the backends' own arithmetic
}

// Compiled again for AVX2 and AVX-512 where the CPU has them (SCE makes them in each of its
// passes): the same IEEE operations on wider lanes, so the same bits.
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void element_variances(const float* x, i64 n, i64 count, i64 j0, i64 j1, double* out) {
  constexpr i64 kRun = 512;  // the means of a run stay in L1 between the two sweeps
  alignas(64) double mean[kRun];
  const double dn = static_cast<double>(n);
  for (i64 a = j0; a < j1; a += kRun) {
    const i64 m = std::min(kRun, j1 - a);
    double* o = out + (a - j0);
    for (i64 k = 0; k < m; ++k) mean[k] = 0;
    for (i64 t = 0; t < n; ++t) {
      const float* xt = x + t * count + a;
      for (i64 k = 0; k < m; ++k) mean[k] += xt[k];
    }
    for (i64 k = 0; k < m; ++k) {
      mean[k] /= dn;
      o[k] = 0;
    }
    for (i64 t = 0; t < n; ++t) {
      const float* xt = x + t * count + a;
      for (i64 k = 0; k < m; ++k) {
        const double d = xt[k] - mean[k];
        o[k] += d * d;
      }
    }
    for (i64 k = 0; k < m; ++k) o[k] /= dn;
  }
}

// A block's eight lanes at a time (lanes8.hpp), each lane's squares still added in index order;
// an element not kept adds +0.0, which leaves a lane's sum as it was (sums of squares are never
// −0). Compiled per instruction set: the scalar loop, with a division and a branch an element,
// was a fifth of an SCE merge's time.
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void add_square_lanes(double* lanes, i64 first, const float* x, i64 count, const unsigned char* keep) {
  constexpr i64 L = kernels::kStatLanes, B = kernels::kStatBlock;
  using Bytes = unsigned char __attribute__((vector_size(L)));
  using Masks = std::int64_t __attribute__((vector_size(L * sizeof(std::int64_t))));
  const auto one = [&](i64 j) {
    if (keep && !keep[j]) return;
    const i64 i = first + j;
    const double v = x[j];
    lanes[(i / B) * L + i % L] += v * v;
  };
  for (i64 j = 0; j < count;) {
    const i64 block = (first + j) / B, end = std::min(count, (block + 1) * B - first);
    for (; j < end && (first + j) % L != 0; ++j) one(j);
    double* at = lanes + block * L;
    Lanes t;
    std::memcpy(&t, at, sizeof t);
    for (; j + L <= end; j += L) {
      Lanes v;
      widen8(v, x + j);
      Lanes sq = v * v;
      if (keep) {
        Bytes k;
        std::memcpy(&k, keep + j, sizeof k);
        const Masks kept = __builtin_convertvector(k, Masks) != 0;
        sq = kept ? sq : Lanes{};
      }
      t += sq;
    }
    std::memcpy(at, &t, sizeof t);
    for (; j < end; ++j) one(j);
  }
}

std::vector<double> energy_weights(std::span<const double> squares, i64 count) {
  const auto n = squares.size();
  std::vector<double> w(n);
  double sum = 0;
  for (std::size_t t = 0; t < n; ++t) {
    w[t] = count > 0 ? squares[t] / static_cast<double>(count) : 0.0;
    sum += w[t];
  }
  for (auto& v : w) v = std::fabs(sum) < 1e-6 ? 1.0 / static_cast<double>(n) : v / sum;
  return w;
}

ThinningSpec thinning_spec(const CombineRecipe& r, const CombineInput& in, i64 t) {
  ThinningSpec s;
  s.kind = r.sparsify;
  s.density = in.densities[t];
  s.gamma = r.sparsify == Sparsify::outliers ? in.gammas[t] : 0.0;
  s.epsilon = r.sparsify == Sparsify::della ? in.epsilons[t] : 0.0;
  s.rescale = r.rescale;
  s.keep_at_least_one = r.keep_at_least_one;
  s.seed = in.seed;
  if (r.sparsify == Sparsify::random || r.sparsify == Sparsify::della)
    s.stream = kernels::stream_id(in.name + "#" + std::to_string(t));
  s.shape.assign(in.shape.begin(), in.shape.end());
  return s;
}

namespace {

// SCE's selection: the top ⌊select_topk · m⌋ elements by their (population) variance across
// the tasks, m the number of elements whose variance is not zero; the others are zeroed in
// every task. Equal variances go to the lower index.
void select_by_variance(std::span<float> stack, i64 n, i64 count, double topk, int threads) {
  if (topk >= 1) return;
  std::vector<double> var(static_cast<std::size_t>(count));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (i64 j = 0; j < count; ++j) var[j] = element_variance(stack.data(), n, count, j);
  const i64 nonzero = std::count_if(var.begin(), var.end(), [](double v) { return v != 0; });
  const i64 k = topk <= 0 ? 0 : static_cast<i64>(static_cast<double>(nonzero) * topk);
  std::vector<i64> order(static_cast<std::size_t>(count));
  std::iota(order.begin(), order.end(), i64{0});
  const auto larger = [&](i64 a, i64 b) { return var[a] > var[b] || (var[a] == var[b] && a < b); };
  if (k < count) std::nth_element(order.begin(), order.begin() + k, order.end(), larger);
  for (i64 i = k; i < count; ++i)
    for (i64 t = 0; t < n; ++t) stack[t * count + order[i]] = 0.0f;
}

// SCE's task weights: each task's sum of squares in the statistics blocks' lanes (as the
// backends sum it), then energy_weights.
std::vector<double> stack_energy_weights(std::span<const float> stack, i64 n, i64 count) {
  std::vector<double> squares(static_cast<std::size_t>(n));
  const i64 blocks = (count + kernels::kStatBlock - 1) / kernels::kStatBlock;
  std::vector<double> lanes(static_cast<std::size_t>(blocks * kernels::kStatLanes));
  for (i64 t = 0; t < n; ++t) {
    std::fill(lanes.begin(), lanes.end(), 0.0);
    add_square_lanes(lanes.data(), 0, stack.data() + t * count, count, nullptr);
    squares[t] = kernels::lanes_total(lanes.data(), blocks);
  }
  return energy_weights(squares, count);
}

}  // namespace

// The tasks' (thinned) values combined element by element: weighted, sign-elected, summed and
// divided (combine.hpp's steps after the thinning and SCE's selection). `x` is n × count.
namespace {

// combine_tasks works in blocks of elements, each step a loop over the block (vectorised), the
// tasks in order: every element's vote and sums are added in task order, as one element at a
// time would.
constexpr i64 kCombineBlock = 512;

// One block, elements [b, b + kCombineBlock) ∩ [0, count), on this thread. Compiled again for
// AVX2 and AVX-512 where the CPU has them: wider vectors for the same IEEE operations per element
// in the same order (no FMA: the file is compiled without contraction), so the same bits on every
// machine.
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void combine_block(const CombineRecipe& r, const float* x, i64 n, i64 count, const double* w, double weight_sum,
                   i64 b, i64 end, const float* base, float* out) {
  constexpr i64 kBlock = kCombineBlock;
  const bool elect = r.elect_sign, weighted = r.elect_on_weighted, by_count = r.election == SignElection::count;
  {
    const i64 m = std::min(kBlock, end - b);
    double vote[kBlock], sum[kBlock], agreeing[kBlock], agreeing_weight[kBlock];
    // Only the sums a recipe uses are zeroed: clearing all four was a third of a task arithmetic
    // merge's time in this function.
    const bool counts = elect || r.normalize == Normalize::agreeing_count || r.normalize == Normalize::agreeing_weight ||
                        r.normalize == Normalize::agreeing_weight_floor;
    for (i64 j = 0; j < m; ++j) sum[j] = 0;
    if (counts)
      for (i64 j = 0; j < m; ++j) agreeing[j] = agreeing_weight[j] = 0;
    if (elect) {
      for (i64 j = 0; j < m; ++j) vote[j] = 0;
      for (i64 t = 0; t < n; ++t) {
        const float* xt = x + t * count + b;
        const double wt = weighted ? w[t] : 1.0;
        for (i64 j = 0; j < m; ++j) {
          const double e = wt * xt[j];
          vote[j] += by_count ? double((e > 0) - (e < 0)) : e;
        }
      }
      // The majority's sign, + where the vote is 0; a value agrees when e · majority > 0 (so a
      // zero never does). Branch-free, so that each loop vectorises.
      for (i64 j = 0; j < m; ++j) vote[j] = vote[j] >= 0 ? 1.0 : -1.0;
    }
    for (i64 t = 0; t < n; ++t) {
      const float* xt = x + t * count + b;
      const double wt = w[t], we = weighted ? w[t] : 1.0;
      if (!elect) {
        for (i64 j = 0; j < m; ++j) sum[j] += wt * double(xt[j]);
        continue;
      }
      for (i64 j = 0; j < m; ++j) {
        const double v = xt[j];
        const double ok = static_cast<double>(we * v * vote[j] > 0);
        sum[j] += ok * (wt * v);  // ±0 where it disagrees: the sum is never −0, so unchanged
        agreeing[j] += ok;
        agreeing_weight[j] += ok * wt;
      }
    }
    const double lambda = r.lambda;
    switch (r.normalize) {
      case Normalize::none:
        for (i64 j = 0; j < m; ++j) out[b + j] = static_cast<float>(sum[j] / 1.0 * lambda);
        break;
      case Normalize::agreeing_count:
        for (i64 j = 0; j < m; ++j) out[b + j] = static_cast<float>(sum[j] / std::max(agreeing[j], 1.0) * lambda);
        break;
      case Normalize::agreeing_weight:
        for (i64 j = 0; j < m; ++j)
          out[b + j] = static_cast<float>(sum[j] / (agreeing_weight[j] == 0 ? 1.0 : agreeing_weight[j]) * lambda);
        break;
      case Normalize::weight_sum:
        for (i64 j = 0; j < m; ++j) out[b + j] = static_cast<float>(sum[j] / weight_sum * lambda);
        break;
      case Normalize::agreeing_weight_floor:
        for (i64 j = 0; j < m; ++j) out[b + j] = static_cast<float>(sum[j] / std::max(agreeing_weight[j], 1e-6) * lambda);
        break;
    }
    if (base)  // the merged task vector back onto the base (f32), while the block is in cache
      for (i64 j = 0; j < m; ++j) out[b + j] += base[b + j];
  }
}

}  // namespace

void combine_tasks(const CombineRecipe& r, const float* x, i64 n, i64 count, const double* w,
                   std::span<float> out, int threads, const float* base) {
  const double weight_sum = combine_weight_sum({w, static_cast<std::size_t>(n)});
#pragma omp parallel for num_threads(threads) schedule(static)
  for (i64 b = 0; b < count; b += kCombineBlock) combine_block(r, x, n, count, w, weight_sum, b, count, base, out.data());
}

void combine_tasks_run(const CombineRecipe& r, const float* x, i64 n, i64 count, const double* w,
                       std::span<float> out, i64 begin, i64 end, const float* base) {
  const double weight_sum = combine_weight_sum({w, static_cast<std::size_t>(n)});
  for (i64 b = begin; b < end; b += kCombineBlock) combine_block(r, x, n, count, w, weight_sum, b, end, base, out.data());
}

void combine_stack(const CombineRecipe& r, const CombineInput& in, std::span<float> out,
                   int threads) {
  const i64 n = in.n, count = in.count;
  if (static_cast<i64>(in.stack.size()) != n * count || static_cast<i64>(out.size()) != count ||
      static_cast<i64>(in.weights.size()) != n || static_cast<i64>(in.densities.size()) != n)
    throw std::logic_error("combine_stack: sizes do not match");
  if ((r.sparsify == Sparsify::outliers && static_cast<i64>(in.gammas.size()) != n) ||
      (r.sparsify == Sparsify::della && static_cast<i64>(in.epsilons.size()) != n))
    throw std::logic_error("combine_stack: gammas or epsilons missing");
  const auto task = [&](i64 t) { return in.stack.subspan(t * count, count); };
  // One task at a time, each on every thread (a task's tensor is the large dimension).
  if (r.sparsify != Sparsify::none)
    for (i64 t = 0; t < n; ++t) Thinning(thinning_spec(r, in, t), count).run(task(t), threads);
  if (r.select_by_variance) select_by_variance(in.stack, n, count, in.select_topk, threads);
  const auto energy = r.weights_from_energy ? stack_energy_weights(in.stack, n, count) : std::vector<double>{};
  combine_tasks(r, in.stack.data(), n, count, r.weights_from_energy ? energy.data() : in.weights.data(), out,
                threads);
}

}  // namespace revmerge
