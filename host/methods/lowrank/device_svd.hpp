#pragma once
// PT-SVD on a GPU: every task's Δ_t = W_t − W_base of one module formed on the device from the
// files' bytes, and the randomized SVD of all of them in one batch (one shared sketch), in f64.
// The algorithm is randomized_svd's (Gaussian sketch with oversampling, power iterations
// re-orthonormalised after every multiply, an exact SVD of the small projection); the
// re-orthonormalisation is CholeskyQR2, with Householder QR for a matrix it cannot hold to
// orthonormality (a rank-deficient sketch: an exactly low-rank or zero Δ).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "backend/backend.hpp"
#include "methods/lowrank/randomized_svd.hpp"
#include "revmerge/dtype.hpp"

namespace revmerge {

/// A weight as its file holds it: `data` points at in · out values of `dtype` (row-major out × in).
struct RawWeight {
  const std::byte* data = nullptr;
  DType dtype = DType::F32;
};

struct DeltaSvd {
  TruncatedSvd svd;                ///< of Δᵀ (column-major in × out), as pt_svd returns it
  double norm_sq = 0;              ///< ‖Δ‖_F²
  std::int64_t nonfinite_at = -1;  ///< the first element of Δ that is NaN or ±Inf (svd empty)
};

class DeviceDeltaSvd {
 public:
  virtual ~DeviceDeltaSvd() = default;
  /// For each fine-tune t, Δ_t = fine_tunes[t] − base (F32, F16, BF16 or F64 each) and its
  /// randomized SVD with `options` (rank, oversampling, power iterations, sketch seed and
  /// stream). Tasks go in batches as large as the device memory allows. When some Δ_t holds a
  /// non-finite value, its `nonfinite_at` is set and no SVD is computed. Throws device_error /
  /// solver_error.
  virtual std::vector<DeltaSvd> run(const RawWeight& base, std::span<const RawWeight> fine_tunes,
                                    std::int64_t in, std::int64_t out,
                                    const RandomizedSvdOptions& options) = 0;
  /// Device memory run() holds for a batch of `tasks` deltas of one in × out module whose
  /// files hold at most `element_bytes` per value.
  virtual std::size_t work_bytes(std::int64_t tasks, std::int64_t in, std::int64_t out,
                                 const RandomizedSvdOptions& options,
                                 std::size_t element_bytes) const = 0;
  /// Keeps run()'s batches within `bytes` of device memory (at least one task per batch).
  virtual void limit_memory(std::size_t bytes) = 0;
};

/// The GPU engine on `backend`'s device, or nullptr for the CPU backend (whose PT-SVD is
/// pt_svd on host memory). It has its own stream and library handles, so it may run on one
/// thread while the backend computes on another.
std::unique_ptr<DeviceDeltaSvd> make_device_delta_svd(Backend& backend);

}  // namespace revmerge
