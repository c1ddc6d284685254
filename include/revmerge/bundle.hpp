#pragma once
/// \file
/// The reversible bundle: a folder with `bundle.safetensors` (per module, the tensors of the
/// module's representation: RMM's mean, basis and coefficients per side, or each task's own
/// truncated factors) — or those tensors in shards, `bundle-0000k-of-0000n.safetensors`, listed
/// by `bundle.safetensors.index.json` (`merge --shard-per-rank`: one shard per worker) — and
/// `manifest.json` (what was merged, how, and how well). docs/bundle.md
/// specifies both so that Python with `safetensors` alone can revert a task.
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "revmerge/checkpoint.hpp"
#include "revmerge/safetensors.hpp"

namespace revmerge {

inline constexpr const char* kBundleTensorsName = "bundle.safetensors";
inline constexpr const char* kBundleManifestName = "manifest.json";
/// A sharded bundle's index (the Hugging Face layout: tensor name -> shard file).
inline constexpr const char* kBundleIndexName = "bundle.safetensors.index.json";
/// Shard `k` (1-based) of `count`: bundle-0000k-of-0000n.safetensors.
std::string bundle_shard_name(int k, int count);
/// Version 1: every module RMM with the bundle's one p. Version 2: a representation per module,
/// RMM with a p per side (written by `--method auto` and `rank`; `--method rmm` still writes
/// version 1).
inline constexpr int kBundleFormatVersion = 2;

/// How one module keeps its n tasks: RMM per position (mean, basis, coefficients per side),
/// each task's ΔW_i = B_iA_i truncated to its own rank k_i (B'_i = U Σ, A'_i = Vᵀ), one row
/// basis V (in × K) shared by all tasks with B̃_i = ΔW_i V (ΔŴ_i = B̃_i Vᵀ), or a row basis V
/// (in × Kv) and a column basis U (out × Ku) shared by all tasks, each task's factors in their
/// coordinates (ΔŴ_i = U (Uᵀ s_iB_i)(A_i V) Vᵀ, at the task's own rank).
enum class Representation { rmm, rank, shared_rows, shared };
const char* representation_name(Representation r) noexcept;

/// One merged task.
struct BundleTask {
  std::string name;
  std::string source;                   ///< the adapter folder it came from
  std::string base_model_name_or_path;  ///< from its adapter_config.json
  std::string task_type;
};

/// One merged module. Per-task vectors are in task order.
struct BundleModule {
  std::string path;   ///< "model.layers.0.self_attn.q_proj"
  int layer = -1;
  std::string name;   ///< "self_attn.q_proj"
  std::int64_t in = 0, out = 0;
  std::int64_t rank = 0;               ///< r: the largest task rank; smaller ones zero-padded
  std::vector<std::int64_t> task_ranks;
  /// Per task, the scale folded into what the bundle stores (alpha / r, or alpha / √r with
  /// rslora; 1 for a task without the module): B̂ / scale is the task's factor before scaling.
  /// Empty in bundles written before revmerge recorded it.
  std::vector<double> task_scales;
  double storage_ratio = 0;            ///< stored numbers / the tasks' own A and B numbers
  Representation representation = Representation::rmm;
  /// rmm: this module's p per side (A, B); 0 keeps the mean alone (no basis or coefficients).
  std::array<std::int64_t, 2> basis = {0, 0};
  std::vector<std::int64_t> kept_ranks;  ///< rank: per task k_i (0: the task's delta dropped)
  std::int64_t shared_rank = 0;          ///< shared_rows: K, 1 ≤ K ≤ rank
  /// shared: the bases' sizes (Kv of the row basis, A side; Ku of the column basis, B side).
  std::array<std::int64_t, 2> shared_basis = {0, 0};
  /// Tasks added later (`revmerge add`), each kept as its own truncation to k_i directions in
  /// the "added" tensors, whatever the module's representation of the first tasks.
  std::vector<std::int64_t> added_kept_ranks;
  /// rmm only (empty for rank modules, whose factors live in another basis than the task's):
  std::vector<double> factor_error_a;  ///< ‖Â_i − A_i‖_F / ‖A_i‖_F
  std::vector<double> factor_error_b;  ///< ‖B̂_i − B_i‖_F / ‖B_i‖_F (scale folded into B)
  std::vector<double> delta_error;     ///< ‖B̂_iÂ_i − B_iA_i‖_F / ‖B_iA_i‖_F
  std::vector<double> delta_norm;      ///< ‖B_iA_i‖_F (scale folded), to weigh modules
  std::vector<double> spectrum_a;      ///< Σ over positions of each eigenvalue, descending
  std::vector<double> spectrum_b;

  /// Numbers stored for this module: rmm in(p_A(r + n) + r) + out(p_B(r + n) + r), rank
  /// Σ k_i (in + out), for the n tasks its representation covers; plus Σ k_i (in + out) of the
  /// added tasks.
  std::int64_t stored_numbers(std::int64_t represented_tasks) const;
};

/// The manifest: everything about a bundle except its tensors.
struct BundleManifest {
  int format_version = 1;
  std::string method = "rmm";  ///< "rmm" (version 1), "auto" or "rank" (version 2)
  std::int64_t basis = 0;  ///< p of a version 1 bundle (every module's); 0 in version 2
  DType dtype = DType::F32;
  std::vector<BundleTask> tasks;
  /// How many of the first tasks the modules' representations cover (0: all); the tasks after
  /// them were added by `revmerge add` (version 2).
  std::int64_t base_tasks = 0;
  std::vector<BundleModule> modules;
  double storage_ratio = 0;  ///< over all modules
  /// Bytes of the tasks' own A and B factors in their own dtypes (what keeping every adapter
  /// takes), and of the bundle's tensors in the stored dtype; 0 where a bundle does not record
  /// them (written before they were).
  std::uint64_t input_bytes = 0, stored_bytes = 0;
  std::string created_by;
  std::string backend;  ///< where it was computed, e.g. "cpu (OpenBLAS + LAPACKE, 2 threads)"
  /// The tasks' adapters say fan_in_fan_out (a base whose weights are in × out, GPT-2's
  /// Conv1D): reverted adapters say it too, and a full model adds each delta transposed.
  /// Written only when true.
  bool fan_in_fan_out = false;

  std::int64_t task_index(const std::string& name) const;  ///< -1 when absent
  std::int64_t represented_tasks() const noexcept {
    return base_tasks ? base_tasks : static_cast<std::int64_t>(tasks.size());
  }
};

/// Tensor names of a module's stored factors: side is "lora_A" or "lora_B", part is "mean",
/// "basis" or "coef" (rmm), or "factors" (rank: the tasks' truncated factors stacked, A' as
/// Σk × in, B' as out × Σk, task i's at offset Σ_{j<i} k_j), "shared" (shared_rows: Vᵀ as
/// K × in, the B̃_i side by side as out × nK; shared: Vᵀ as Kv × in and U as out × Ku), "cores"
/// (shared: the A_i V stacked as Σr_i × Kv, the Uᵀ s_iB_i side by side as Ku × Σr_i), or "added"
/// (the added tasks' truncated factors, stacked as rank's).
std::string bundle_tensor_name(const std::string& module_path, const char* side, const char* part);

std::string manifest_to_json(const BundleManifest& m);
/// Parses and validates a manifest; throws format_error naming `file` and the field.
BundleManifest parse_manifest(const std::string& text, const std::string& file);

/// An opened bundle: manifest parsed, tensors mapped (one file or the index's shards), every
/// tensor present with the shape the manifest implies.
class Bundle {
 public:
  explicit Bundle(const std::filesystem::path& dir);
  const std::filesystem::path& dir() const noexcept { return dir_; }
  const BundleManifest& manifest() const noexcept { return manifest_; }
  const Checkpoint& tensors() const noexcept { return *tensors_; }
  bool sharded() const noexcept { return !tensors_->index_path().empty(); }

 private:
  std::filesystem::path dir_;
  BundleManifest manifest_;
  std::unique_ptr<Checkpoint> tensors_;
};

}  // namespace revmerge
