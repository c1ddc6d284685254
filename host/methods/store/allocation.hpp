#pragma once
// The storage allocation behind `merge --method auto`: per module, the representations it may
// take with their storage and error; one choice per module that minimises the summed weighted
// squared error under one budget of stored numbers (or keeps every error under a bound).
#include <cstdint>
#include <vector>

namespace revmerge {

/// A representation of fixed size (RMM at one p): numbers stored and its weighted squared error
/// Σ_i w_i ‖ΔŴ_i − ΔW_i‖², with the largest per-task relative error for --max-error.
struct FixedOption {
  double numbers = 0;
  double error = 0;
  double worst_relative = 0;
};

/// What a module may become. `sigma_sq[i]` holds the squared singular values of task i's delta
/// ΔW_i, descending: keeping its (k+1)-th direction saves w_i σ_k² of error at `rank_unit`
/// numbers (in + out). ‖ΔW_i‖² is their sum.
struct ModuleOptions {
  std::vector<std::vector<double>> sigma_sq;
  std::vector<double> task_weight;  ///< w_i ≥ 0
  double rank_unit = 0;
  std::vector<FixedOption> fixed;
  /// Whether the tasks' own truncations may be kept; false: a fixed option or nothing.
  bool truncations = true;
};

/// A module's choice: `fixed` ≥ 0 names the fixed option taken; otherwise `kept[i]` directions
/// of each task's own truncation.
struct ModuleChoice {
  int fixed = -1;
  std::vector<std::int64_t> kept;
  double numbers = 0, error = 0;
};

/// The choice per module minimising Σ error with Σ numbers ≤ `budget`: a Lagrange multiplier
/// found by bisection (each module then chooses alone: every direction worth more than λ per
/// number, or a fixed option where its error + λ·numbers is lower), the budget left over
/// filled with the most valuable directions that still fit, then spent on moves to larger fixed
/// options (best error saved per number first); last, each module in turn chooses again alone
/// within what the others leave (a truncation or another option where the multiplier's choice
/// jumped past the budget's edge), then modules trade: one takes another option while the
/// truncated modules give up (or take) the directions that pay for it, where the total error
/// falls. Optimal on the options' convex hull; deterministic for given inputs.
std::vector<ModuleChoice> allocate_budget(const std::vector<ModuleOptions>& modules, double budget);

/// The cheapest choice per module whose every task keeps its relative delta error
/// ‖ΔŴ_i − ΔW_i‖ / ‖ΔW_i‖ at most `max_error`.
std::vector<ModuleChoice> allocate_max_error(const std::vector<ModuleOptions>& modules,
                                             double max_error);

}  // namespace revmerge
