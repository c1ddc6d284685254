#pragma once
/// \file
/// The comparison behind the RMM paper's argument: on one set of adapters, RMM at several basis
/// sizes against every classic method and the budgeted store at RMM's storage, per task — how far each task's delta moves
/// (‖ΔŴ_i − ΔW_i‖_F / ‖ΔW_i‖_F over all modules) and what is stored relative to keeping all
/// adapters.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "revmerge/classic.hpp"
#include "revmerge/rmm.hpp"

namespace revmerge {

/// One classic merge to run: method, mode (LoRA separate or combined).
struct CompareMethod {
  ClassicMethod method;
  LoraMergeMode mode;
};

struct CompareOptions {
  std::vector<TaskSource> tasks;          ///< PEFT adapters, at least 2
  std::vector<std::int64_t> basis_sizes;  ///< RMM's P values (empty: 1, n/4, n/2, n − 1)
  std::vector<CompareMethod> methods;     ///< empty: every classic method, both modes
  /// The classic methods' weights. Empty: each method averages what it merges — TIES and
  /// DARE-TIES divide by the agreeing tasks themselves (w = 1); the others get w = 1/n in
  /// combined mode (the mean product) and w = 1/n² in separate mode (√w = 1/n on A and on B:
  /// the mean A times the mean B).
  std::vector<double> weights;
  double density = 0.5;                   ///< TIES, DARE, magnitude pruning
  std::uint64_t seed = 0;                 ///< DARE
  /// Also the budgeted store (store.hpp) at each RMM row's storage: a row for each
  /// representation allocated alone — `rank`, RMM with a P per module and side, the shared bases
  /// (`shared_rows` and `shared`) — then `auto` weighing them all.
  bool stores = true;
  int threads = 0;
  Device device = Device::automatic;      ///< RMM's backend
  int gpu = 0;
  /// Called before each row is measured with (rows done, rows in all, the row's label).
  ProgressFn progress;
};

struct CompareRow {
  std::string label;                ///< "rmm P=2", "ties (separate)", "shared bases at rmm P=2's storage", ...
  double storage = 0;               ///< stored numbers / all the tasks' adapter numbers
  std::vector<double> task_error;   ///< per task, in task order
  double mean_error = 0;
  std::vector<double> weights;      ///< classic methods: the weights used
  std::string note;                 ///< why the row has no figures (e.g. ranks differ)
};

struct CompareReport {
  std::vector<std::string> tasks;
  std::vector<CompareRow> rows;
};

/// Runs every merge in a scratch folder (removed afterwards) and measures the errors against
/// the tasks' own adapters through r × r Grams (no out × in matrix). Throws what merge_rmm and
/// merge_classic throw.
CompareReport compare_methods(const CompareOptions& options);

}  // namespace revmerge
