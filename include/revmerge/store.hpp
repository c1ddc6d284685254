#pragma once
/// \file
/// The budgeted reversible store: n adapters kept in one bundle (format version 2) where each
/// module takes the representation that serves it best under one storage budget — RMM at a
/// basis size p, or each task's own delta truncated to a rank of its own — and records what it
/// chose. `--method auto` chooses among both, `--method rank` truncations only.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "revmerge/bundle.hpp"
#include "revmerge/devices.hpp"
#include "revmerge/recipe.hpp"
#include "revmerge/rmm.hpp"

namespace revmerge {

enum class StoreMethod { automatic, rank };

/// What a storage budget is spent to lower: the mean over tasks of the squared relative delta
/// error, or the largest task's.
enum class StoreObjective { mean, max };

/// The storage budget: a fraction of the numbers all adapters hold (0 < fraction ≤ 1), or bytes
/// of stored tensors in the bundle's dtype. Exactly one is set.
struct StorageBudget {
  std::optional<double> fraction;
  std::optional<std::uint64_t> bytes;
};

struct StoreMergeOptions {
  std::vector<TaskSource> tasks;  ///< PEFT adapters, at least 2, unique names
  StoreMethod method = StoreMethod::automatic;
  /// One of the two: the budget the whole bundle stays within, or the largest relative delta
  /// error ‖ΔŴ_i − ΔW_i‖_F / ‖ΔW_i‖_F any task may have in any module (the cheapest choice
  /// per module that keeps it).
  StorageBudget storage;
  std::optional<double> max_error;
  /// Under a storage budget: minimise the mean task error (default) or the worst task's.
  StoreObjective objective = StoreObjective::mean;
  /// The representations `auto` weighs per module (without rank, each task's truncation is kept
  /// only in modules none of the others fits, or that no other keeps within --max-error); empty:
  /// all of them.
  std::vector<Representation> representations;
  /// RMM basis sizes `auto` weighs per module and side, besides 0 (the mean alone): measured
  /// from one RMM of the module at the largest; a pair storing as much as the adapters is
  /// skipped. Empty: every P up to 8, then the powers of 2, below n.
  std::vector<std::int64_t> rmm_basis;
  std::filesystem::path out;
  std::optional<DType> dtype;  ///< stored dtype; empty: the inputs' (as merge_rmm)
  bool overwrite = false;
  int threads = 0;
  Device device = Device::automatic;  ///< where RMM candidates are computed
  int gpu = 0;
  ProgressFn progress;  ///< called per module of each pass (2 passes: measure, then store)
  OutputRecipe recipe;
  /// Set when `tasks` name full fine-tunes (model folders) instead of adapters: each is first
  /// compressed against `full_models->base` at `full_models->rank` — the adapter `revmerge
  /// compress` writes, in f32, on `device` — into a temporary folder beside `out` that goes
  /// whatever happens; the manifest and the recipe name the model folders. Without `dtype`,
  /// the bundle takes the base's dtype (bf16 models give a bf16 bundle).
  std::optional<FullModelInputs> full_models;
  ProgressFn compress_progress;  ///< with full_models: per module of each fine-tune's compression
  /// The workers the store is split across (as RmmMergeOptions::peers: MPI ranks, or threads),
  /// each calling merge_store with the same options and its own peers: each measures and writes
  /// its contiguous share of the modules, the measurements are exchanged so every worker makes
  /// the same allocation, worker 0 commits; the bundle is byte for byte one worker's. With
  /// full_models each fine-tune's compression is split across them first.
  Peers* peers = nullptr;
  bool shard_per_rank = false;  ///< as RmmMergeOptions::shard_per_rank
  /// Several GPUs of this process (as RmmMergeOptions::gpus): one worker per entry, each
  /// computing its share's RMM candidates (and full fine-tunes' compressions) on its GPU with
  /// `threads` CPU threads (0: the cores divided among them). With peers of several processes,
  /// every entry of every process is a worker.
  std::vector<int> gpus;
  /// Where the time goes: called as each step of a module ends (and once for the allocation and
  /// the commit) with the step's name and its wall seconds, from every worker thread of this
  /// process at once (the callee locks). Steps that queue device work return before it ran;
  /// the wait shows in the step that takes the results. Empty: nothing is timed.
  std::function<void(const std::string& step, double seconds)> timing;
};

/// Measures every module's options (each task's singular values; RMM at each candidate p for
/// `auto`), allocates the budget across modules minimising the mean over tasks (or, with
/// StoreObjective::max, the largest) of the squared relative delta error
/// Σ_m ‖ΔŴ_{m,i} − ΔW_{m,i}‖² / Σ_m ‖ΔW_{m,i}‖², then reads the
/// adapters again and writes the bundle (atomically). The manifest's errors are measured after
/// rounding to the stored dtype. Throws usage_error (budget or bound out of range, naming the
/// option), and what merge_rmm throws for its inputs.
BundleManifest merge_store(const StoreMergeOptions& options);

struct AddTasksOptions {
  std::filesystem::path bundle;   ///< the bundle to extend (format version 1 or 2)
  std::vector<TaskSource> tasks;  ///< PEFT adapters of the bundle's modules, at least 1
  std::filesystem::path out;      ///< the new bundle (refused if it exists unless overwrite)
  /// The largest relative delta error a new task may have in any module; empty: per module, the
  /// worst delta error the bundle's tasks have there (new tasks no worse than the old ones).
  std::optional<double> max_error;
  bool overwrite = false;
  int threads = 0;
  ProgressFn progress;
  OutputRecipe recipe;
};

/// `revmerge add`: a copy of the bundle with more tasks, each new task stored per module as its
/// own truncation within the error target (the "added" tensors); the existing tasks' tensors
/// are copied byte for byte and need no adapters. The result is format version 2 (base_tasks
/// says how many tasks the modules' representations cover). Throws usage_error (names in use,
/// a bad bound), shape_error (a module the bundle lacks or has with another shape, or a rank
/// above the module's), and what reading the adapters throws; nothing is written on failure.
BundleManifest add_tasks(const AddTasksOptions& options);

/// "mean" or "max" as an objective; `option` names the option in the usage_error.
StoreObjective parse_store_objective(const std::string& text, const std::string& option);

/// "rmm,rank,shared_rows,shared" as representations; `option` names the option in the usage_error
/// a bad name gives.
std::vector<Representation> parse_representations(const std::string& text, const std::string& option);

/// "0.25" or "25%" as a fraction, or a size ("2GiB", "512MB") as bytes; `option` names the
/// option in the usage_error a bad value gives.
StorageBudget parse_storage_budget(const std::string& text, const std::string& option);

}  // namespace revmerge
