#pragma once
/// \file
/// Reversible Model Merging of LoRA adapters: merge n adapters into a bundle, revert any task
/// from it. See docs/bundle.md for the stored format and DESIGN.md §2 for the mathematics.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "revmerge/bundle.hpp"
#include "revmerge/devices.hpp"
#include "revmerge/peers.hpp"
#include "revmerge/recipe.hpp"

namespace revmerge {

/// A task to merge: its name in the bundle and its PEFT adapter folder.
struct TaskSource {
  std::string name;
  std::filesystem::path adapter;
  /// What the manifest records as the task's source when it is not `adapter` (a full
  /// fine-tune compressed into a temporary adapter first).
  std::filesystem::path origin = {};
};

/// Called after each module with (modules done, modules in all, module path).
using ProgressFn = std::function<void(std::size_t, std::size_t, const std::string&)>;

/// Where a streamed merge stands, reported after each layer is written.
struct PipelineProgress {
  std::size_t layers_done = 0, layers = 0;          ///< decoder layers (other modules: one group)
  std::uint64_t bytes_read = 0, bytes_total = 0;    ///< input tensor bytes
  double seconds = 0;                               ///< since the merge started
  bool finished = false;                            ///< the last call
};
using PipelineProgressFn = std::function<void(const PipelineProgress&)>;

/// What a streamed merge did: wall time, each stage's busy seconds (its work, not its waits),
/// bytes, the memory plan and what the backend's pool held at most.
struct PipelineStats {
  bool pipelined = true;
  double seconds = 0;  ///< the whole merge: setup + pipeline + finish
  /// Opening the adapters, starting the backend (a GPU context and its libraries), the memory
  /// plan; the streamed stages; committing the output (the final fsync and renames).
  double setup_seconds = 0, pipeline_seconds = 0, finish_seconds = 0;
  double read_seconds = 0, upload_seconds = 0, compute_seconds = 0, write_seconds = 0;
  /// Seconds each stage sat blocked on its queues (no input yet, or no room for its output):
  /// where a pipeline does not overlap, these say which stage held the others up.
  double read_wait_seconds = 0, upload_wait_seconds = 0, compute_wait_seconds = 0,
         write_wait_seconds = 0;
  std::uint64_t bytes_read = 0, bytes_written = 0;
  std::uint64_t host_budget = 0, device_budget = 0;  ///< bytes; device 0 on the CPU backend
  std::uint64_t planned_host_bytes = 0, planned_device_bytes = 0;
  int staging_slots = 0;
  std::uint64_t backend_peak_bytes = 0;  ///< the backend pool's peak (device memory on CUDA)
  std::size_t modules = 0, layers = 0;
};

struct RmmMergeOptions {
  std::vector<TaskSource> tasks;  ///< at least 2, unique names
  std::int64_t basis = 0;         ///< p, 1 ≤ p ≤ n − 1
  std::filesystem::path out;      ///< bundle folder to create
  /// Stored dtype of the bundle tensors (F32, F16 or BF16); empty: the inputs' (BF16 adapters
  /// give a BF16 bundle; the widest when they differ, F64 stored as F32).
  std::optional<DType> dtype;
  bool overwrite = false;         ///< replace an existing `out`
  int threads = 0;                ///< CPU threads, 0 = all cores
  Device device = Device::automatic;
  int gpu = 0;                    ///< CUDA device index
  bool allow_nonfinite = false;   ///< merge NaN / Inf inputs instead of refusing them
  ProgressFn progress;
  /// Bytes of host memory (and of device memory, on a GPU) the merge may hold; 0 = derived
  /// from what is free now. Too small for one module is a usage_error naming it.
  std::uint64_t memory_budget = 0;
  /// One module at a time on one thread (read, upload, compute, write) instead of the
  /// overlapped pipeline; the output is bitwise the same.
  bool sequential = false;
  /// Threads that write finished modules (each its own byte ranges) and threads that copy a
  /// module's input bytes into staging; 0 = chosen by the core count (1 on small machines).
  int writer_threads = 0, reader_threads = 0;
  PipelineProgressFn pipeline_progress;
  PipelineStats* stats = nullptr;  ///< filled when set
  OutputRecipe recipe;             ///< the command / config recorded in the bundle's recipe
  /// The workers this merge is split across (MPI ranks, or threads with a backend each), every
  /// one calling merge_rmm with the same options but its own peers: each merges a contiguous
  /// share of the modules (balanced by bytes) and writes its tensors into the one bundle file;
  /// worker 0 gathers the module entries and commits. The bundle is byte for byte the one a
  /// single worker writes; a failure on any worker fails every worker with its message and
  /// leaves nothing. Null (or one worker): the whole merge here.
  Peers* peers = nullptr;
  /// With several workers: each writes its tensors into a shard of its own, listed by the
  /// bundle's index (`--shard-per-rank`: no file shared between machines), rather than into the
  /// one file. The tensors' bytes are the single worker's.
  bool shard_per_rank = false;
  /// Several GPUs of this process (`--gpus 0,1,2,3`; an index may repeat: two workers on one
  /// GPU): one worker thread per entry, each with its own CUDA backend, pipeline and share of
  /// the modules, as `peers` would split them; each worker holds `memory_budget` (0: half the
  /// free host memory divided among the workers) and `threads` CPU threads (0: the cores divided
  /// among them). Empty: `device` and `gpu` alone. With peers of several processes (MPI ranks),
  /// every entry of every process is a worker (each process giving as many).
  std::vector<int> gpus;
};

/// Full fine-tunes for merge_rmm_models: compressed against `base` to rank `rank` (PT-SVD,
/// see compress.hpp) before RMM.
struct FullModelInputs {
  std::filesystem::path base;
  std::int64_t rank = 0;
  std::int64_t oversampling = 8;
  int power_iterations = 2;
};

/// RMM over full fine-tunes: `options.tasks` name model folders. Each module streams through
/// the pipeline as merge_rmm's do, its tasks' deltas W_t − W_base compressed to `inputs.rank`
/// by randomized SVD as the module is read (the base's weight from disk once per module; the
/// factors are those `revmerge compress` would write, so the bundle is the one merging those
/// adapters would give). The manifest records the model folders as the tasks' sources.
BundleManifest merge_rmm_models(const RmmMergeOptions& options, const FullModelInputs& inputs);

/// Merges the adapters into a bundle at `options.out` and returns its manifest. Every module of
/// every layer is merged; scales are folded into B; ranks are zero-padded to the largest.
/// Nothing is written unless the whole merge succeeds. Throws usage_error (basis, names,
/// counts), io_error / format_error / unsupported_error (inputs: names the folder, module and
/// tensor), shape_error (adapters for different base shapes, a module missing from a task).
BundleManifest merge_rmm(const RmmMergeOptions& options);

/// The compute backend a merge or revert with these settings would use ("cpu (...)",
/// "cuda:0 NVIDIA H200"); throws device_error when `device` is cuda and none is usable.
std::string backend_description(Device device, int threads, int gpu);

struct RevertOptions {
  DType dtype = DType::F32;  ///< dtype of the written adapter tensors
  bool overwrite = false;
  int threads = 0;
  Device device = Device::automatic;
  int gpu = 0;
  OutputRecipe recipe;  ///< the command recorded in the output's recipe
};

/// Rebuilds task `task` from a bundle and writes it as a PEFT adapter folder at `out` (scale
/// folded into the factors, lora_alpha = r). Throws usage_error for an unknown task name.
void revert_task(const Bundle& bundle, const std::string& task, const std::filesystem::path& out,
                 const RevertOptions& options);

/// Rebuilds task `task` as a full Hugging Face model at `out`: each bundle module's weight in
/// `base` plus the task's reconstructed delta B̂Â, every other tensor of the base copied, the
/// base's config files copied. `dtype` sets the float tensors' output dtype (default: the base
/// tensor's). Throws usage_error (task), shape_error (a module without its weight in the base,
/// named), and what the writers throw; nothing is written on failure.
void revert_task_full(const Bundle& bundle, const std::string& task,
                      const std::filesystem::path& base, const std::filesystem::path& out,
                      const RevertOptions& options, std::optional<DType> dtype);

/// The reconstructed factors of one task and module: A (rank × in) and B (out × rank), f32.
struct RevertedModule {
  std::vector<float> a, b;
};

/// Reconstructs one module of one task (the arithmetic revert_task writes out).
RevertedModule revert_module(const Bundle& bundle, std::size_t module_index,
                             std::int64_t task_index, Device device = Device::cpu);

}  // namespace revmerge
