#pragma once
// Randomized truncated SVD (Halko, Martinsson & Tropp 2011, Algorithms 4.4 and 5.1): a Gaussian
// sketch with oversampling, power iterations re-orthonormalised after every multiply
// (Householder QR), and an exact SVD of the small projected matrix. The power iterations run
// in f32; the last multiply, its QR, the projection and its SVD in f64 — the last two through
// CholeskyQR2 (level-3 BLAS) where it holds, Householder / LAPACK's SVD where it does not.
#include <cstdint>
#include <span>
#include <vector>

#include "core/large_buffer.hpp"

namespace revmerge {

struct RandomizedSvdOptions {
  std::int64_t rank = 0;         ///< k: singular triplets kept
  std::int64_t oversampling = 8; ///< p: sketch width is k + p (capped at min(m, n))
  int power_iterations = 2;      ///< q
  std::uint64_t seed = 0;        ///< the sketch's counter-based Gaussian draws:
  std::uint64_t stream = 0;      ///< counter_normal(seed, stream, element)
};

/// A ≈ U diag(s) Vᵀ with U m × k and V n × k (column-major), s descending.
struct TruncatedSvd {
  std::int64_t k = 0;
  std::vector<double> u, s, v;
  double captured = 0;  ///< ‖QᵀA‖_F², the energy of A inside the sketch's range
};

/// Scratch a run of SVDs keeps from one call to the next: the same memory again instead of
/// fresh pages (which the kernel zeroes, on the critical path) for every module.
struct RandomizedSvdWork {
  LargeBuffer<float> a32;  ///< A's f32 copy for the power iterations (unless the caller has one)
  std::vector<float> y32, z32, tau32;
  std::vector<double> omega, z, y, b, ub, s, vt, tau, copy, g, first, rb;
};

/// The randomized SVD of the column-major m × n matrix `a`. ‖A − U_k S_k V_kᵀ‖_F² equals
/// ‖A‖_F² − Σ_{i≤k} s_i² exactly (both parts are orthogonal). `work` (optional) is scratch
/// kept between calls; `a32` (optional, m · n) is A rounded to f32 when the caller made it
/// already (the power iterations' copy). Its own loops run on the OpenMP threads the BLAS has.
/// Throws solver_error.
TruncatedSvd randomized_svd(std::span<const double> a, std::int64_t m, std::int64_t n,
                            const RandomizedSvdOptions& options, RandomizedSvdWork* work = nullptr,
                            std::span<const float> a32 = {});


/// CholeskyQR2 of the column-major rows × cols matrix `x` (rows ≥ cols), in place: X = Q R with
/// Q orthonormal, from two rounds of Gram (dsyrk), Cholesky and a triangular solve — all
/// level-3 BLAS, where Householder's panels of a few dozen columns run at level-2 speed. It
/// holds while κ(X) is well below 1/√ε (≈ 10⁸); the second round's R must be within 0.1 of I
/// (then the first round's Q was nearly orthonormal and the second's is to ε). Returns false
/// where it does not hold — `x` is then garbage: the caller redoes it by Householder from its own
/// copy. `r` (optional) gets R, cols × cols, upper, column-major; `g` and `first` are scratch.
bool cholesky_qr2(double* x, std::int64_t rows, std::int64_t cols, double* r, std::vector<double>& g,
                  std::vector<double>& first);

/// The exact SVD of the column-major l × l matrix `a` (LAPACK), its first k triplets: u and v
/// l × k column-major, s descending. The GPU engine's last step, on the host.
void leading_svd(std::span<const double> a, std::int64_t l, std::int64_t k, double* u, double* s,
                 double* v);

}  // namespace revmerge
