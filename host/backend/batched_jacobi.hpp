#pragma once
// Eigendecomposition of many small symmetric matrices at once by cyclic Jacobi rotations, in
// double, four matrices in lockstep so each rotation's arithmetic runs on SIMD lanes.
//
// Why not LAPACK: RMM solves one n × n Gram per weight position (n = tasks): ~80 000 8 × 8
// problems per llama-7b layer. LAPACK has no batched interface, and per call dsyevd spends most
// of its time in setup (argument checks, tridiagonal reduction, dsteqr's bookkeeping) — a
// quarter of the CPU backend's whole merge time in a profile. Batched Jacobi is what cuSOLVER's
// syevjBatched does on the GPU; it is accurate to rounding for small eigenvalues too. Each
// matrix gets exactly the rotations it would get alone (a lane that has converged is rotated
// by the identity), so results never depend on which matrices share a group.
// Checked against LAPACK's dsyevd in tests/backend/batched_jacobi_test.cpp.
#include <cstdint>

namespace revmerge {

/// Largest n batched_jacobi_eigen takes (the CPU backend uses LAPACK above it).
inline constexpr std::int64_t kJacobiMaxN = 16;

/// Solves matrices [first, last) of `a` (packed batch × n × n, f32, symmetric). On return row k
/// of each matrix holds the unit eigenvector of eigenvalue k, and `eigenvalues` (batch × n) the
/// eigenvalues ascending — the Backend::symmetric_eigen contract. Returns the index of a matrix
/// whose rotations did not converge (non-finite values), or -1.
std::int64_t batched_jacobi_eigen(float* a, float* eigenvalues, std::int64_t n,
                                  std::int64_t first, std::int64_t last);

}  // namespace revmerge
