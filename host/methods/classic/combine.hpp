#pragma once
// The element-wise core of task arithmetic, TIES, DARE and magnitude pruning: n same-shaped
// task tensors in, one tensor out. Both conventions (PEFT's on adapters, mergekit's on
// checkpoints) are one recipe with different switches; docs/methods.md lists them.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kernels/elementwise.hpp"
#include "revmerge/classic.hpp"

namespace revmerge {

enum class Rescale { none, inverse_density, l1 };
using Normalize = kernels::CombineNormalize;
enum class Convention { peft, mergekit };
/// How each task's own values are thinned before they are combined (docs/methods.md):
/// magnitude keeps the top ⌊density · count⌋ by |x|; random (DARE) keeps each element with
/// probability density; outliers (breadcrumbs) drops the top ⌊γ · count⌋ and keeps the next
/// ⌊density · count⌋; della keeps each element with a probability that grows with its
/// magnitude's rank in its row, from density − ε to density + ε.
enum class Sparsify { none, magnitude, random, outliers, della };

/// The switches of one merge. Order of steps: sparsify each task (on the task's own values)
/// and rescale it, select elements by their variance across tasks (SCE), weight, elect, sum,
/// divide, scale by λ.
struct CombineRecipe {
  Convention convention = Convention::peft;
  Sparsify sparsify = Sparsify::none;
  bool keep_at_least_one = false;  ///< mergekit: at least one element survives a magnitude trim
  Rescale rescale = Rescale::none;
  bool select_by_variance = false;  ///< SCE: keep the elements whose values vary most
  bool weights_from_energy = false;  ///< SCE: task weights ∝ mean(δᵢ²), summing to 1
  bool elect_sign = false;
  SignElection election = SignElection::sum;
  bool elect_on_weighted = false;  ///< mergekit elects on wᵢxᵢ, PEFT and SCE on xᵢ
  Normalize normalize = Normalize::none;
  double lambda = 1.0;
};

/// The recipe for `method` under `convention`, with the user's overrides applied. Throws
/// usage_error for cat / svd (not element-wise).
CombineRecipe make_recipe(const ClassicMergeOptions& options, Convention convention);

/// One tensor of every task: `stack` is n × count (task-major), `weights`, `densities`,
/// `gammas` and `epsilons` n each (the last two only where the recipe uses them). `name` keys
/// the random masks' streams (stream_id(name + "#" + task index)); `shape` gives DELLA its rows
/// (empty: one row).
struct CombineInput {
  std::span<float> stack;
  std::int64_t n = 0, count = 0;
  std::span<const double> weights, densities;
  std::string name;
  std::uint64_t seed = 0;
  std::span<const double> gammas = {}, epsilons = {};
  std::span<const std::int64_t> shape = {};
  double select_topk = 1.0;
};

/// Writes the merged tensor (count elements) into `out`; sums in double, in task order, so the
/// result does not depend on the thread count. `stack` is modified (trimmed / dropped).
void combine_stack(const CombineRecipe& recipe, const CombineInput& input, std::span<float> out,
                   int threads);

/// The tasks' values (after thinning and SCE's selection), n × count, combined element by
/// element with the task weights `w` (n): weighted, sign-elected, summed, divided, scaled by λ,
/// rounded to f32, and `base[j]` added (f32) where `base` is given.
void combine_tasks(const CombineRecipe& recipe, const float* x, std::int64_t n, std::int64_t count,
                   const double* w, std::span<float> out, int threads, const float* base = nullptr);
/// combine_tasks' elements [begin, end) alone, on the calling thread (the same bits).
void combine_tasks_run(const CombineRecipe& recipe, const float* x, std::int64_t n, std::int64_t count,
                       const double* w, std::span<float> out, std::int64_t begin, std::int64_t end,
                       const float* base);

/// The sum of the task weights `w` that weight_sum normalisation divides by: 1 where it is
/// below 1e-8 in magnitude (mergekit's guard).
double combine_weight_sum(std::span<const double> w);

/// SCE's population variance of element j across the n tasks of `x` (n × count), in f64.
double element_variance(const float* x, std::int64_t n, std::int64_t count, std::int64_t j);
/// element_variance of elements [j0, j1) into out[0 .. j1 − j0): the same operations in the
/// same order per element (the same bits), in loops over the elements that run on vector lanes.
void element_variances(const float* x, std::int64_t n, std::int64_t count, std::int64_t j0, std::int64_t j1,
                       double* out);
/// SCE's task weights from each task's sum of squares over its kept elements in a tensor of
/// `count`: the mean squares over their sum (equal where that sum is below 1e-6).
std::vector<double> energy_weights(std::span<const double> squares, std::int64_t count);
/// Adds x[j]² (f64) for the elements j of a piece at tensor element `first` — those with
/// keep[j] != 0 where `keep` is given — into the statistics lanes (element i into lane
/// i mod kStatLanes of block i / kStatBlock), each lane in index order, as the backends do.
void add_square_lanes(double* lanes, std::int64_t first, const float* x, std::int64_t count,
                      const unsigned char* keep);

/// The tasks' own steps, exposed for tests. Every ranking by magnitude orders equal magnitudes
/// by index, the lower index counting as the larger. The trim keeps the k largest |x|; the
/// drop keeps element j when counter_uniform(seed, stream, j) < density; the outlier trim
/// keeps the elements ranked γN .. γN + density·N − 1 from the top (fewer dropped from the top
/// where the two do not fit); the DELLA drop keeps element j when counter_uniform(seed, stream,
/// j) < its probability. `rescale` is applied to the kept values (l1: back to the task's L1
/// norm, unless either norm is below 1e-7).
/// Each runs on `threads` OpenMP threads with the same result for any count (sums per fixed
/// chunk, added in order).
void magnitude_trim(std::span<float> x, double density, bool keep_at_least_one,
                    Rescale rescale = Rescale::none, int threads = 1);
void random_drop(std::span<float> x, double density, Rescale rescale, std::uint64_t seed,
                 std::uint64_t stream, int threads = 1);
void outlier_trim(std::span<float> x, double density, double gamma, Rescale rescale, int threads = 1);
void della_drop(std::span<float> x, std::span<const std::int64_t> shape, double density,
                double epsilon, Rescale rescale, std::uint64_t seed, std::uint64_t stream,
                int threads = 1);
/// DELLA's keep probability for the element of ascending magnitude rank `rank` (1-based) in a
/// row of `length`, in f32 as mergekit computes it; a row of one element gets density.
float della_probability(std::int64_t rank, std::int64_t length, double density, double epsilon);

}  // namespace revmerge
