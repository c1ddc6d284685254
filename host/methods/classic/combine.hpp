#pragma once
// The element-wise core of task arithmetic, TIES, DARE and magnitude pruning: n same-shaped
// task tensors in, one tensor out. Both conventions (PEFT's on adapters, mergekit's on
// checkpoints) are one recipe with different switches; docs/methods.md lists them.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "revmerge/classic.hpp"

namespace revmerge {

enum class Rescale { none, inverse_density, l1 };
enum class Normalize { none, agreeing_count, agreeing_weight, weight_sum };
enum class Convention { peft, mergekit };

/// The switches of one merge. Order of steps: trim or drop each task (on the task's own
/// values), weight, elect, sum, divide, scale by λ.
struct CombineRecipe {
  bool magnitude_trim = false;     ///< keep each task's top ⌊density · count⌋ by |x|
  bool keep_at_least_one = false;  ///< mergekit: at least one element survives a trim
  bool random_drop = false;        ///< DARE: keep each element with probability density
  Rescale rescale = Rescale::none;
  bool elect_sign = false;
  SignElection election = SignElection::sum;
  bool elect_on_weighted = false;  ///< mergekit elects on wᵢxᵢ, PEFT on xᵢ
  Normalize normalize = Normalize::none;
  double lambda = 1.0;
};

/// The recipe for `method` under `convention`, with the user's overrides applied. Throws
/// usage_error for cat / svd (not element-wise).
CombineRecipe make_recipe(const ClassicMergeOptions& options, Convention convention);

/// One tensor of every task: `stack` is n × count (task-major), `weights` and `densities` n
/// each. `name` keys DARE's mask streams (stream_id(name + "#" + task index)).
struct CombineInput {
  std::span<float> stack;
  std::int64_t n = 0, count = 0;
  std::span<const double> weights, densities;
  std::string name;
  std::uint64_t seed = 0;
};

/// Writes the merged tensor (count elements) into `out`; sums in double, in task order, so the
/// result does not depend on the thread count. `stack` is modified (trimmed / dropped).
void combine_stack(const CombineRecipe& recipe, const CombineInput& input, std::span<float> out,
                   int threads);

/// The tasks' own steps, exposed for tests: the trim keeps the k largest |x| (ties broken
/// towards the lower index); the drop keeps element j when counter_uniform(seed, stream, j)
/// < density.
void magnitude_trim(std::span<float> x, double density, bool keep_at_least_one);
void random_drop(std::span<float> x, double density, Rescale rescale, std::uint64_t seed,
                 std::uint64_t stream);

}  // namespace revmerge
