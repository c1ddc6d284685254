#pragma once
// The batched PT-SVD's own pieces (batched_pt_svd.hpp), shared by its two files: the driver
// (batched_pt_svd.cpp: Δ, the subspace iteration, the batches) and the orthonormalisation steps
// (batched_pt_svd_orth.cpp). Not for use elsewhere.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "methods/lowrank/batched_pt_svd.hpp"

namespace revmerge {
namespace batched_pt_svd_parts {

inline std::size_t doubles(std::int64_t count) { return static_cast<std::size_t>(count) * sizeof(double); }

/// R = R₂ R₁ (both l × l upper triangular, column-major; below the diagonal the factors hold
/// the Grams, which are not read).
void r_of_rounds(const double* r1, const double* r2, std::int64_t l, double* r);

}  // namespace batched_pt_svd_parts

// A batch's sizes: T tasks of m × n, sketch width l, rank k, file elements of at most
// `element_bytes`.
struct BatchedPtSvd::Shape {
  std::int64_t tasks, m, n, l, k;
  std::size_t element_bytes;

  // The blocks of one batch, in the order run_batch allocates them (work_bytes sums the same
  // list, so the two cannot drift apart); the pointer arrays are the backend's, per solve.
  std::vector<std::size_t> blocks() const {
    using batched_pt_svd_parts::doubles;
    const std::int64_t T = tasks, ll = l * l;
    return {static_cast<std::size_t>(m * n) * element_bytes,  // the base's bytes
            static_cast<std::size_t>(m * n) * element_bytes,  // one fine-tune's bytes
            doubles(T * m * n),                               // Δ
            static_cast<std::size_t>(T) * (3 * sizeof(double) + 3 * sizeof(int)),  // scalars
            doubles(n * l),                                                        // Ω
            doubles(T * m * l),                                                    // Y, then Q
            doubles(T * std::max(m, n) * l),                    // CholeskyQR's first pass
            doubles(T * n * l),                                 // Z, then Bᵀ, then Q₂
            doubles(3 * T * ll),                                // two Cholesky factors, R⁻¹
            2 * static_cast<std::size_t>(T) * sizeof(double*),  // the solvers' pointer arrays
            doubles(2 * T * l * k + T * k),                     // U_R, V_R, S
            doubles(T * m * k),                                 // U
            doubles(T * n * k),                                 // V
            T > 1 ? static_cast<std::size_t>(m * n) * element_bytes : 0};  // the next fine-tune's bytes
  }
};

// Two pinned host buffers the weights pass through on a GPU, in turn: one is filled while the
// other's upload runs (a pageable copy from the mapped file would run at a fraction of the
// link's rate, faulting pages in on one thread). The uploads run on the engine's copy stream,
// so a buffer is refilled once its own upload has run, not once the compute has caught up.
struct BatchedPtSvd::Staging {
  DeviceBuffer buffer[2];
  Event uploaded[2];  // each buffer's last upload, on the copy stream
  int next = 0;
};

// A batch's device memory. The fine-tunes' bytes go to two buffers in turn: the next task's
// upload (copy stream) overlaps this task's Δ (compute stream), and a buffer is written again
// only after the Δ that reads it (`consumed`).
struct BatchedPtSvd::Batch {
  DeviceBuffer ft_raw[2], delta, scalars, omega, y, w, z, factors, small_factors, u, v;
  Event consumed[2];
};

// The batch's scalars block: ‖Δ_t‖², the captured energy, the first non-finite element, both
// rounds' Cholesky info words, and whether CholeskyQR2 held at every step.
struct BatchedPtSvd::Scalars {
  double* norms;
  double* captured;
  std::uint64_t* bad;
  int* infos;
  int* held;
  Scalars(const DeviceBuffer& block, std::int64_t T)
      : norms(static_cast<double*>(block.data())),
        captured(norms + T),
        bad(reinterpret_cast<std::uint64_t*>(norms + 2 * T)),
        infos(reinterpret_cast<int*>(norms + 3 * T)),
        held(infos + 2 * T) {}
};

}  // namespace revmerge
