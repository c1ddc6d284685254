#pragma once
// PT-SVD of one linear module, shared by `revmerge compress` and the RMM merge of full
// fine-tunes: the randomized SVD of Δ (row-major out × in) and the LoRA factors it gives.
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/counter_rng.hpp"
#include "kernels/lowrank_kernels.hpp"
#include "methods/lowrank/batched_pt_svd.hpp"
#include "methods/lowrank/randomized_svd.hpp"
#include "revmerge/hf_model.hpp"

namespace revmerge {

/// Refuses a fine-tune whose tensor for the base's module `w` is missing or of another shape:
/// shape_error naming its folder and the tensor (`whose` says which fine-tune it is).
void check_fine_tune_tensor(const HfModel& ft, const LinearWeight& w, const std::string& whose);

/// Δ = W_ft − W_base of module `w` in f64 into `delta` (in · out doubles, laid out as the file
/// holds the weight: out × in, or in × out where `w.stored_in_by_out`), converted and
/// subtracted a block at a time from both files' mapped bytes (their pages leave the resident
/// set afterwards); returns ‖Δ‖_F² (summed by block in order: the same for any thread count).
/// With `delta32` (in · out floats), Δ rounded to f32 there too, in the same pass (the power
/// iterations' copy). Blocks on `threads` OpenMP threads. Throws format_error naming the folder,
/// tensor and first element of a non-finite value, or a tensor that is not floats of that size.
double read_delta_into(const HfModel& base, const HfModel& ft, const LinearWeight& w,
                       std::span<double> delta, std::span<float> delta32 = {}, int threads = 1);

/// The mapped bytes of module `w`'s tensor in `model`, for a device to read. Throws
/// format_error naming the folder and tensor when it is not a float tensor of in · out values.
RawWeight raw_weight(const HfModel& model, const LinearWeight& w);

/// The sketch settings of module `w`'s PT-SVD: the stream is the tensor's name, so every task's
/// delta of a module gets the same sketch.
inline RandomizedSvdOptions pt_svd_options(const LinearWeight& w, std::int64_t rank,
                                           std::int64_t oversampling, int power_iterations,
                                           std::uint64_t seed) {
  return {rank, oversampling, power_iterations, seed, kernels::stream_id(w.tensor)};
}

/// Row-major out × in is column-major in × out (M = Δᵀ), so Δ = V S Uᵀ from M = U S Vᵀ. A
/// weight stored in × out (`w.stored_in_by_out`, as `delta` then is) is column-major Δ itself:
/// its U and V trade places, so the result is always that of Δᵀ. The sketch's stream is the
/// tensor's name: every task's delta of a module gets the same sketch. `work` and `delta32` as
/// randomized_svd's `work` and `a32`.
inline TruncatedSvd pt_svd(std::span<const double> delta, const LinearWeight& w, std::int64_t rank,
                           std::int64_t oversampling, int power_iterations, std::uint64_t seed,
                           RandomizedSvdWork* work = nullptr, std::span<const float> delta32 = {}) {
  auto svd = randomized_svd(delta, w.cols(), w.rows(),
                            pt_svd_options(w, rank, oversampling, power_iterations, seed), work, delta32);
  if (w.stored_in_by_out) std::swap(svd.u, svd.v);
  return svd;
}

/// The PT-SVDs of module `w` for every fine-tune on the batched engine: Δ_t formed in backend
/// memory from the files' bytes, all tasks in batches (pt_svd's algorithm, in f64 throughout).
/// With `stacks`, the factors go into those RMM stacks in backend memory (run_into_stacks)
/// instead of U and V coming back. Throws format_error naming the fine-tune's folder, the tensor
/// and the element of a non-finite delta. The tensors' pages leave the resident set afterwards.
std::vector<DeltaSvd> batched_pt_svd(BatchedPtSvd& engine, const HfModel& base,
                                     std::span<const HfModel* const> fine_tunes,
                                     const LinearWeight& w, const RandomizedSvdOptions& options,
                                     const BatchedPtSvd::Stacks* stacks = nullptr);

/// The first k triplets as LoRA factors with scale 1: A = U_kᵀ (r × in) and B = V_k S_k
/// (out × r), rows of A and columns of B from k to r zero — r = k for an adapter, the padded
/// rank for a merge's stack. The arithmetic is the backends' (kernels::LoraStackA / B), so the
/// factors made on a device are these, to the bit.
inline void lora_factors(const TruncatedSvd& svd, std::int64_t k, const LinearWeight& w, float* a,
                         float* b, std::int64_t r) {
  const kernels::LoraStackA to_a{svd.u.data(), w.in, k, r, a};
  const kernels::LoraStackB to_b{svd.v.data(), svd.s.data(), w.out, k, r, b};
  for (std::int64_t i = 0; i < r * w.in; ++i) to_a(i);
  for (std::int64_t i = 0; i < w.out * r; ++i) to_b(i);
}

}  // namespace revmerge
