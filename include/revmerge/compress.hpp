#pragma once
/// \file
/// Post-training SVD (PT-SVD): a full fine-tune compressed to a PEFT LoRA adapter. Per linear
/// module Δ = W_ft − W_base is factorised by a randomized truncated SVD, ΔW ≈ B A with
/// B = V_k S_k (out × k) and A = U_kᵀ (k × in) — the form `lora_B`, `lora_A` take — written with
/// scale 1 (`lora_alpha = r`, per-module ranks in `rank_pattern`).
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "revmerge/recipe.hpp"

#include "revmerge/devices.hpp"
#include "revmerge/dtype.hpp"
#include "revmerge/rmm.hpp"

namespace revmerge {

struct CompressOptions {
  std::filesystem::path base, model, out;
  std::int64_t rank = 0;            ///< k, the largest rank written
  std::int64_t oversampling = 8;    ///< sketch columns beyond k
  int power_iterations = 2;
  /// When in (0, 1]: each module's rank is the smallest k ≤ rank keeping this fraction of
  /// ‖Δ‖_F²; 0 keeps `rank` everywhere.
  double energy = 0;
  std::vector<std::string> include;  ///< module names to compress ("q_proj"); empty: all linears
  std::vector<std::string> exclude;  ///< module names to skip
  DType dtype = DType::F32;
  std::uint64_t seed = 0;
  bool overwrite = false;
  int threads = 0;                  ///< BLAS threads (0: OpenBLAS's default)
  /// Where the SVDs run: on a GPU the deltas are formed there from the files' bytes and solved
  /// in f64 (CholeskyQR2 re-orthonormalisation); on the CPU with OpenBLAS / LAPACK.
  Device device = Device::automatic;
  int gpu = 0;                      ///< CUDA device index
  ProgressFn progress;
  OutputRecipe recipe;              ///< the command recorded in the adapter's recipe
  /// The workers the compression is split across (as RmmMergeOptions::peers): each compresses
  /// a contiguous share of the modules into the one adapter file; worker 0 commits; the adapter
  /// and the report are one worker's, byte for byte. Fixed ranks only (energy ranks are known
  /// after each SVD).
  Peers* peers = nullptr;
  /// Whether to compare the tensors the adapter does not carry with the base's
  /// (CompressReport::left_out); a caller that reports them itself turns it off.
  bool find_left_out = true;
  /// Whether the modules whose other tensors differ from the base's (embeddings, norms, the
  /// head, a classifier the fine-tune added) go into the adapter whole, as PEFT's
  /// `modules_to_save` (CompressReport::kept_whole), so base + adapter is the fine-tune there
  /// too. Not for a module the adapter compresses (a changed bias of a linear stays left out).
  bool save_changed = false;
};

struct CompressedModule {
  std::string path;
  std::int64_t out = 0, in = 0, rank = 0;
  double relative_error = 0;  ///< ‖Δ − BA‖_F / ‖Δ‖_F (0 for Δ = 0)
  double delta_norm = 0;      ///< ‖Δ‖_F
};

/// A tensor the adapter does not carry where the fine-tune differs from the base (its
/// embeddings, norms, head, a classifier it added, 3-D expert tensors, modules left out by
/// include / exclude): base + adapter is not the fine-tune there.
struct UncarriedTensor {
  std::string tensor;
  std::string why;  ///< "changed", "only in the fine-tune", "only in the base", "shape A → B"
};

struct CompressReport {
  std::vector<CompressedModule> modules;
  std::vector<UncarriedTensor> left_out;  ///< in the base's tensor order, then the fine-tune's own
  /// With save_changed: the tensors written whole (every tensor of each kept module, the
  /// fine-tune's bytes), why their module was kept ("changed", "shape A → B", "only in the
  /// fine-tune"; "kept with its module" for an unchanged tensor of it), in the same order.
  std::vector<UncarriedTensor> kept_whole;
  std::vector<std::string> modules_kept_whole;  ///< their modules, PEFT's modules_to_save
  double relative_error = 0;  ///< over all modules
  double storage = 0;         ///< adapter numbers / the compressed weights' numbers
  std::string device;         ///< where the SVDs ran ("cpu", "cuda:0 NVIDIA H200")
};

/// Compresses `model` against `base` into an adapter at `out` (atomic; nothing on failure).
/// Throws usage_error (options), io_error / format_error (inputs), shape_error (a module missing
/// from the fine-tune or of another shape, named), solver_error.
CompressReport compress_checkpoint(const CompressOptions& options);

}  // namespace revmerge
