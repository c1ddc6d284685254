#pragma once
// The per-task error terms of an RMM module from its error Grams, for the host and the device
// alike (cuda/ launches them, the CPU backend runs them per index).
//
// For task t, with E_A = [A; D_A] (2r × in) and E_B = [B, D_B] (out × 2r), one GEMM per side
// gives G_A = E_A E_Aᵀ and G_B = E_Bᵀ E_B in `chunks` pieces each (split-K over the positions).
// ‖B̂Â − BA‖² = ‖B̂ D_A + D_B A‖² then comes from r × r blocks of them, with no out × in matrix
// (rmm_module.cpp spells the expansion out), and the factor errors from their traces.
// RmmChunkSums adds the pieces in a fixed order, RmmErrorRowDots sums the dots' rows and
// RmmErrorDots forms the terms; every sum runs in one thread in a fixed order, so the results
// do not depend on the thread count.
#include <cstdint>

#include "kernels/host_device.hpp"

namespace revmerge::kernels {

/// Σ term(i) for i in [0, count), added in order of i, the terms made 16 at a time before any
/// is added: a GPU thread then has 16 loads in flight instead of waiting on each in turn (its
/// compiler unrolls a sum of unknown length ~4 deep). The same additions in the same order, so
/// the same bits as a plain loop.
template <class Term>
REVMERGE_HD_INLINE double ordered_sum(std::int64_t count, Term&& term) {
  constexpr int kBatch = 16;
  double sum = 0;
  std::int64_t i = 0;
  for (; i + kBatch <= count; i += kBatch) {
    double v[kBatch];
    for (int u = 0; u < kBatch; ++u) v[u] = term(i + u);
    for (int u = 0; u < kBatch; ++u) sum += v[u];
  }
  for (; i < count; ++i) sum += term(i);
  return sum;
}

/// The terms RmmErrorDots writes per task, in this order.
enum RmmErrorTerm : int {
  kBtB_DaDa,    ///< ⟨BᵀB, D_A D_Aᵀ⟩
  kDbDb_DaDa,   ///< ⟨D_BᵀD_B, D_A D_Aᵀ⟩
  kBDb_DaDa,    ///< ⟨BᵀD_B, D_A D_Aᵀ⟩
  kDbDb_AA,     ///< ⟨D_BᵀD_B, A Aᵀ⟩
  kBDb_DaA,     ///< ⟨BᵀD_B, D_A Aᵀ⟩
  kDbDb_DaA,    ///< ⟨D_BᵀD_B, D_A Aᵀ⟩
  kBtB_AA,      ///< ⟨BᵀB, A Aᵀ⟩ = ‖BA‖²  (the dots above, the traces below)
  kDaSq,        ///< ‖D_A‖²
  kASq,         ///< ‖A‖²
  kDbSq,        ///< ‖D_B‖²
  kBSq,         ///< ‖B‖²
  kRmmErrorTerms
};

/// The terms that are dots of two r × r blocks (the first ones); the rest are traces.
inline constexpr int kRmmDotTerms = kBtB_AA + 1;

/// Positions per partial sum of the spectrum: fixed, so the sums do not depend on the device.
inline constexpr std::int64_t kSpectrumChunk = 256;

struct RmmErrorArgs {
  const float* gram[2] = {};  ///< side s: n × chunks[s] Grams of 2r × 2r, f32, packed
  std::int64_t chunks[2] = {};
  std::int64_t n = 0, r = 0;
  /// 2 × n × 2r × 2r: the Grams summed over chunks; then, per side, n × ⌈m / kSpectrumChunk⌉
  /// partial sums of each eigenvalue over kSpectrumChunk positions (rmm_error_sums_size); then
  /// n × kRmmDotTerms × r row sums of the dots (RmmErrorRowDots). rmm_error_scratch_doubles.
  double* sums = nullptr;
  const double* eigenvalues[2] = {};     ///< side s: m[s] × n
  std::int64_t m[2] = {};
  /// n × kRmmErrorTerms terms, then the spectrum: 2 × n sums of each eigenvalue over the
  /// positions (side A, then side B; largest first).
  double* out = nullptr;
};

REVMERGE_HD inline std::int64_t rmm_spectrum_parts(std::int64_t m) {
  return (m + kSpectrumChunk - 1) / kSpectrumChunk;
}

/// The calls RmmChunkSums takes: one per element of RmmErrorArgs::sums before the row sums.
REVMERGE_HD inline std::int64_t rmm_error_sums_size(const RmmErrorArgs& a) {
  return 2 * a.n * 4 * a.r * a.r + a.n * (rmm_spectrum_parts(a.m[0]) + rmm_spectrum_parts(a.m[1]));
}

/// The calls RmmErrorRowDots takes: a row of a dot's blocks each.
REVMERGE_HD inline std::int64_t rmm_error_row_dots_size(const RmmErrorArgs& a) { return a.n * kRmmDotTerms * a.r; }

/// Doubles RmmErrorArgs::sums holds for n tasks of rank r over m0 and m1 positions.
REVMERGE_HD inline std::int64_t rmm_error_scratch_doubles(std::int64_t n, std::int64_t r, std::int64_t m0,
                                                          std::int64_t m1) {
  RmmErrorArgs a;
  a.n = n, a.r = r, a.m[0] = m0, a.m[1] = m1;
  return rmm_error_sums_size(a) + rmm_error_row_dots_size(a);
}

/// One call per element of `sums`.
struct RmmChunkSums {
  RmmErrorArgs a;
  REVMERGE_HD void operator()(std::int64_t idx) const {
    const std::int64_t r = a.r, per = 4 * r * r, grams = 2 * a.n * per;
    if (idx >= grams) {  // a partial sum of the spectrum
      std::int64_t k = idx - grams;
      const std::int64_t parts0 = a.n * rmm_spectrum_parts(a.m[0]);
      const int side = k < parts0 ? 0 : 1;
      if (side == 1) k -= parts0;
      const std::int64_t parts = rmm_spectrum_parts(a.m[side]), q = k / parts, c = k % parts;
      const std::int64_t j1 = (c + 1) * kSpectrumChunk < a.m[side] ? (c + 1) * kSpectrumChunk : a.m[side];
      const double* e = a.eigenvalues[side] + c * kSpectrumChunk * a.n + q;
      a.sums[idx] =
          ordered_sum(j1 - c * kSpectrumChunk, [&](std::int64_t j) { return e[j * a.n]; });
      return;
    }
    const std::int64_t side = idx / (a.n * per), t = idx / per % a.n, e = idx % per,
                       chunks = a.chunks[side];
    if (chunks == 0) {  // no Grams (the spectrum alone is measured)
      a.sums[idx] = 0;
      return;
    }
    const float* g = a.gram[side] + t * chunks * per + e;
    a.sums[idx] =
        ordered_sum(chunks, [&](std::int64_t c) { return static_cast<double>(g[c * per]); });
  }
};

/// Task t's r × r blocks of its two 2r × 2r Grams (their first elements; rows 2r apart).
struct RmmGramBlocks {
  const double* aa;    ///< A Aᵀ
  const double* dada;  ///< D_A D_Aᵀ
  const double* daa;   ///< D_A Aᵀ
  const double* bb;    ///< BᵀB
  const double* dbdb;  ///< D_BᵀD_B
  const double* bdb;   ///< BᵀD_B
};
REVMERGE_HD_INLINE RmmGramBlocks rmm_gram_blocks(const RmmErrorArgs& a, std::int64_t t) {
  const std::int64_t r = a.r, ld = 2 * r;
  const double* ga = a.sums + t * 4 * r * r;          // side A's Gram of task t
  const double* gb = a.sums + (a.n + t) * 4 * r * r;  // side B's
  return {ga, ga + r * ld + r, ga + r * ld, gb, gb + r * ld + r, gb + r};
}

/// The two blocks a dot term multiplies.
struct RmmDotBlocks {
  const double* x;
  const double* y;
};
REVMERGE_HD_INLINE RmmDotBlocks rmm_dot_blocks(const RmmGramBlocks& g, int term) {
  switch (term) {
    case kBtB_DaDa: return {g.bb, g.dada};
    case kDbDb_DaDa: return {g.dbdb, g.dada};
    case kBDb_DaDa: return {g.bdb, g.dada};
    case kDbDb_AA: return {g.dbdb, g.aa};
    case kBDb_DaA: return {g.bdb, g.daa};
    case kDbDb_DaA: return {g.dbdb, g.daa};
    default: return {g.bb, g.aa};  // kBtB_AA
  }
}

/// One call per (task, dot term, row i): Σ_k x[i, k] · y[i, k] in order of k. A dot is the sum
/// of its rows' sums in order (RmmErrorDots): a thread per row, where one thread a term — every
/// lane of a warp reading a block of its own — took 0.38 ms a module on an H200.
struct RmmErrorRowDots {
  RmmErrorArgs a;
  REVMERGE_HD void operator()(std::int64_t idx) const {
    const std::int64_t r = a.r, ld = 2 * r, t = idx / (kRmmDotTerms * r), i = idx % r;
    const auto blocks = rmm_dot_blocks(rmm_gram_blocks(a, t), static_cast<int>(idx / r % kRmmDotTerms));
    const double* x = blocks.x + i * ld;
    const double* y = blocks.y + i * ld;
    a.sums[rmm_error_sums_size(a) + idx] =
        ordered_sum(r, [&](std::int64_t k) { return x[k] * y[k]; });
  }
};

/// One call per (task, term), then one per (side, eigenvalue index): n · kRmmErrorTerms + 2n.
struct RmmErrorDots {
  RmmErrorArgs a;
  REVMERGE_HD void operator()(std::int64_t idx) const {
    const std::int64_t n = a.n, r = a.r, ld = 2 * r;
    if (idx >= n * kRmmErrorTerms) {  // spectrum: the partial sums in order
      const std::int64_t side = (idx - n * kRmmErrorTerms) / n, q = (idx - n * kRmmErrorTerms) % n;
      const std::int64_t parts = rmm_spectrum_parts(a.m[side]);
      const double* part = a.sums + 2 * n * 4 * r * r +
                           (side == 0 ? 0 : n * rmm_spectrum_parts(a.m[0])) + q * parts;
      a.out[idx] = ordered_sum(parts, [&](std::int64_t c) { return part[c]; });
      return;
    }
    const std::int64_t t = idx / kRmmErrorTerms, term = idx % kRmmErrorTerms;
    double sum = 0;
    if (term < kRmmDotTerms) {  // its rows' sums, in order
      const double* rows = a.sums + rmm_error_sums_size(a) + (t * kRmmDotTerms + term) * r;
      sum = ordered_sum(r, [&](std::int64_t i) { return rows[i]; });
    } else {  // a trace
      const auto g = rmm_gram_blocks(a, t);
      const double* d = term == kDaSq ? g.dada : term == kASq ? g.aa : term == kDbSq ? g.dbdb : g.bb;
      sum = ordered_sum(r, [&](std::int64_t i) { return d[i * ld + i]; });
    }
    a.out[idx] = sum;
  }
};

}  // namespace revmerge::kernels
