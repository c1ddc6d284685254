#pragma once
// Everything RMM does for one position, written once for the CPU and the GPU (DESIGN.md §2, §5).
//
// A position is column j of every task's A (side 0) or row j of every task's B (side 1): n
// r-vectors x_t. The routine gathers them from the files' bytes (any float dtype, B scaled by its
// task's scale, zeros past a task's rank), centres them, forms the n × n Gram in f64, solves it
// by Jacobi rotations in f64, keeps the top p directions as basis and coefficients, rounds them
// to the stored dtype, rebuilds x̂ from what is stored and writes D = x̂ − x beside x for the
// error Grams. Inputs holding NaN / Inf poison the position (NaN results) and are reported.
//
// One source, the same bits everywhere: the routine runs on a *team* of lanes (one lane on a CPU
// thread; a warp or a block of threads on a GPU). Every value is computed by exactly one lane,
// by the same sequence of IEEE operations whatever the team size — sums run in a fixed order on
// one lane, no FMA contraction (the files that compile it say so), only correctly rounded +, −,
// ×, ÷ and √ — so a bundle made on a GPU is bitwise the CPU's, and every CPU test checks the
// device arithmetic. Lanes only split independent work; `sync` orders the phases.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/float_bits.hpp"
#include "kernels/host_device.hpp"
#include "kernels/rmm_jacobi.hpp"
#include "kernels/rmm_position_layout.hpp"
#include "kernels/team.hpp"

namespace revmerge::kernels {

using i64 = std::int64_t;

/// The first half of RMM at position j of side `side` (0: A, 1: B): gather, centre, the Gram,
/// V = I, in the team's scratch (rmm_scratch_bytes(n, r, p, Team::serial) bytes). Returns true
/// when the inputs hold a non-finite value (the position is poisoned; its key is recorded).
///
/// `kTasks`, when not 0, is n known at compile time (it must equal args.n): the same
/// arithmetic, with loops of fixed length the compiler can unroll and vectorise.
///
/// `staged_a`, for a lane alone on side A: this position's A values already widened to f32,
/// task t's row k at staged_a[(t · r + k) · staged_stride], which the caller read for a block of
/// positions at once — the columns of A lie a row apart, and one position alone reads each from
/// a different page.
template <class Team, int kTasks = 0>
REVMERGE_HD_INLINE bool rmm_prepare(const Team& team, const RmmModuleArgs& args, int side, i64 j,
                                    void* scratch, const float* staged_a = nullptr,
                                    i64 staged_stride = 1) {
  const RmmPositionView pos(args, kTasks ? kTasks : args.n, side, j, scratch, Team::serial);
  const i64 n = pos.n, r = pos.r, N = pos.N, np = pos.np;
  const RmmScratch& s = pos.s;
  const ElemType st = pos.st;
  void* mean_out = pos.mean_out;
  float* ext = pos.ext;
  auto ext_at = [&](i64 t, i64 k, int part) { return pos.ext_at(t, k, part); };

  // 1. Gather, checking finiteness (x − x is 0 exactly for finite x). The key of the first
  // non-finite element is looked for only once one is known to be there.
  bool bad = false;
  auto flag_first_bad = [&](i64 t, i64 k0, i64 k1) {
    const RmmTaskFactors& f = args.tasks[t];
    for (i64 k = k0; k < k1; ++k) {
      const float v = pos.x_at(t, k);
      if (!(v - v == 0.0f)) {
        atomic_min_u64(&args.status[0],
                       rmm_input_key(t, side, side == 0 ? k * args.in + j : j * f.rank + k));
        return;
      }
    }
  };
  if constexpr (Team::serial) {
    for (i64 t = 0; t < n; ++t) {
      const RmmTaskFactors& f = args.tasks[t];
      const i64 rank = f.rank, stride = side == 0 ? args.in : 1;
      const i64 first = side == 0 ? j : j * rank;
      const float scale = side == 1 ? f.scale : 1.0f;
      float* e = ext + ext_at(t, 0, 0);
      unsigned nonfinite = 0;  // an exponent of all ones: Inf or NaN (integer work: vectors)
      auto run = [&](auto load) {
        for (i64 k = 0; k < rank; ++k) {
          float v = load(k);
          if (side == 1) v *= scale;
          nonfinite |= (float_bits(v) & 0x7f800000u) == 0x7f800000u;
          s.x[t * r + k] = v;
          e[k] = v;
        }
      };
      const void* src = side == 0 ? f.a : f.b;
      if (staged_a && side == 0) {  // already widened by the caller (a tile of A's columns)
        const float* from = staged_a + t * r * staged_stride;
        run([&](i64 k) { return from[k * staged_stride]; });
      } else switch (f.type) {  // one loop per element type
        case ElemType::bf16: run([&](i64 k) { return load_as_f32(src, first + k * stride, ElemType::bf16); }); break;
        case ElemType::f16: run([&](i64 k) { return load_as_f32(src, first + k * stride, ElemType::f16); }); break;
        case ElemType::f32: run([&](i64 k) { return load_as_f32(src, first + k * stride, ElemType::f32); }); break;
        default: run([&](i64 k) { return load_as_f32(src, first + k * stride, ElemType::f64); }); break;
      }
      for (i64 k = rank; k < r; ++k) s.x[t * r + k] = 0.0f, e[k] = 0.0f;
      if (nonfinite) flag_first_bad(t, 0, rank);
      bad |= nonfinite != 0;
    }
  } else {
    team_gather2<8>(
        team, n, r,
        [&](i64 t, i64 k) {
          const RmmTaskFactors& f = args.tasks[t];
          float v = 0.0f;
          if (k < f.rank) {
            v = load_as_f32(side == 0 ? f.a : f.b, side == 0 ? k * args.in + j : j * f.rank + k,
                            f.type);
            if (side == 1) v *= f.scale;
            if (!(v - v == 0.0f)) bad = true;
          }
          return v;
        },
        [&](i64 t, i64 k, float v) {
          pos.x_at(t, k) = v;
          ext[ext_at(t, k, 0)] = v;
        });
  }
  const bool poisoned = team.any(bad);  // also orders the gather before what reads x
  if constexpr (!Team::serial)
    if (poisoned) team_for(team, n, [&](i64 t) { flag_first_bad(t, 0, args.tasks[t].rank); });
  // 2. The mean of each row, in f64 over the tasks in order; stored rounded. x is centred by
  // the mean as computed.
  if constexpr (Team::serial) {  // the r sums side by side, each over the tasks in order
    double* sum = s.vcol;
    float* m = s.muq;  // the mean as computed, then as stored
    for (i64 k = 0; k < r; ++k) sum[k] = 0;
    for (i64 t = 0; t < n; ++t)
      for (i64 k = 0; k < r; ++k) sum[k] += s.x[t * r + k];
    for (i64 k = 0; k < r; ++k) m[k] = static_cast<float>(sum[k] / static_cast<double>(n));
    for (i64 t = 0; t < n; ++t)
      for (i64 k = 0; k < r; ++k) s.xct[t * r + k] = s.x[t * r + k] - m[k];
    for (i64 k = 0; k < r; ++k) {
      for (i64 t = 0; t < n; ++t) s.xc[k * np + t] = s.xct[t * r + k];
      for (i64 t = n; t < np; ++t) s.xc[k * np + t] = 0.0f;
    }
    store_rounded_all(mean_out, j * r, st, r, [&](i64 k) -> float& { return m[k]; });
  } else {
    team_for(team, r, [&](i64 k) {
      double sum = 0;
      for (i64 t = 0; t < n; ++t) sum += pos.x_at(t, k);
      const float m = static_cast<float>(sum / static_cast<double>(n));
      s.mc[k] = m;
      s.muq[k] = store_rounded(mean_out, j * r + k, st, m);
    });
  }
  team.sync();
  if (team.lane() == 0) s.flags[0] = poisoned ? 1 : 0;
  if (poisoned) return true;

  // 3. The Gram of the centred vectors in f64 (products of floats are exact there): each entry
  // summed over k in order; V = I; the padding row and column of an odd n zero. Entry (a, b)
  // and (b, a) are the same products in the same order, so the matrix is exactly symmetric. A
  // lane alone keeps eight sums of a row side by side — the same sums, in the same order.
  if constexpr (Team::serial) {
    for (i64 i = 0; i < N * N; ++i) s.g[i] = 0, s.vt[i] = 0;
    for (i64 a = 0; a < N; ++a) s.vt[a * N + a] = 1.0;
    // Four rows of eight sums at a time: independent chains of additions (the padding columns
    // of xc are zero, so rows past n are harmless and not kept).
    for (i64 a0 = 0; a0 < n; a0 += 4)
      for (i64 b0 = 0; b0 < n; b0 += 8) {
        double acc[4][8] = {};
        for (i64 k = 0; k < r; ++k) {
          const float* xk = s.xc + k * np;
          for (int aa = 0; aa < 4; ++aa) {
            const double xa = xk[a0 + aa];
            for (int bb = 0; bb < 8; ++bb) acc[aa][bb] += xa * static_cast<double>(xk[b0 + bb]);
          }
        }
        for (i64 aa = 0; aa < 4 && a0 + aa < n; ++aa)
          for (i64 bb = 0; bb < 8 && b0 + bb < n; ++bb) s.g[(a0 + aa) * N + b0 + bb] = acc[aa][bb];
      }
  } else {
    team_for2(team, N, N, [&](i64 a, i64 b) {
      s.vt[a * N + b] = a == b ? 1.0 : 0.0;
      double g = 0;
      if (a < n && b < n)
        for (i64 k = 0; k < r; ++k)
          g += static_cast<double>(pos.centred(a, k)) * static_cast<double>(pos.centred(b, k));
      s.g[a * N + b] = g;
    });
  }
  team.sync();

  team.sync();
  return false;
}

/// The second half: the eigenvalues sorted, basis and coefficients, what is stored, x̂ and
/// D = x̂ − x. `converged` is the eigensolver's verdict (recorded when false); a poisoned
/// position (rmm_prepare returned true) gets NaN results instead.
template <class Team, int kTasks = 0>
REVMERGE_HD_INLINE void rmm_finish(const Team& team, const RmmModuleArgs& args, int side, i64 j,
                                   void* scratch, bool converged) {
  const RmmPositionView pos(args, kTasks ? kTasks : args.n, side, j, scratch, Team::serial);
  const i64 n = pos.n, r = pos.r, p = pos.p, N = pos.N;
  const RmmScratch& s = pos.s;
  const ElemType st = pos.st;
  void* mean_out = pos.mean_out;
  void* basis_out = pos.basis_out;
  void* coef_out = pos.coef_out;
  float* ext = pos.ext;
  auto ext_at = [&](i64 t, i64 k, int part) { return pos.ext_at(t, k, part); };
  team.sync();
  if (s.flags[0]) {  // poisoned: NaN results, no eigenvalues, D = NaN
    const float nan = bits_float(0x7fc00000u);
    team_for(team, r * p, [&](i64 i) { store_rounded(basis_out, j * r * p + i, st, nan); });
    team_for(team, p * n, [&](i64 i) { store_rounded(coef_out, j * p * n + i, st, nan); });
    team_for(team, r, [&](i64 i) { store_rounded(mean_out, j * r + i, st, nan); });
    team_for(team, n, [&](i64 i) { args.eigenvalues[side][j * n + i] = 0; });
    team_for2(team, n, r, [&](i64 t, i64 k) { ext[ext_at(t, k, 1)] = nan; });
    return;
  }
  if (!converged && team.lane() == 0)
    atomic_min_u64(&args.status[1], (static_cast<unsigned long long>(side) << 48) | j);

  // 5. Eigenvalues largest first (ties: the lower index first). The comparisons combined as
  // integers, not by && and ||: their branches mispredicted half the time on a CPU (~600
  // cycles a position).
  team_for(team, n, [&](i64 i) {
    const double li = s.g[i * N + i];
    int rank = 0;
    for (i64 e = 0; e < n; ++e) {
      const double le = s.g[e * N + e];
      rank += static_cast<int>(le > li) | (static_cast<int>(le == li) & static_cast<int>(e < i));
    }
    s.order[rank] = static_cast<int>(i);
    s.lam[rank] = li;
    args.eigenvalues[side][j * n + rank] = li;
  });
  team.sync();
  // W_p into g's storage: column q is the eigenvector of the q-th largest eigenvalue with its
  // component along the all-ones vector removed (centred data satisfy X̃1 = 0, so the exact
  // eigenvectors of non-zero eigenvalues have none; rounding would leak it into x̂).
  double* w = s.g;
  team_for(team, p, [&](i64 q) {
    const double* v = s.vt + static_cast<i64>(s.order[q]) * N;
    double mean = 0;
    for (i64 t = 0; t < n; ++t) mean += v[t];
    mean /= static_cast<double>(n);
    for (i64 t = 0; t < n; ++t) w[q * n + t] = v[t] - mean;
  });
  team.sync();

  // 6. Basis V = X̃ W_p with unit columns and coefficients C = norm · W_pᵀ. A column whose
  // energy is rounding noise next to the largest eigenvalue is dropped (zero). Each entry of
  // V is one sum over the tasks in order, each column's squared norm one sum over k in order.
  const double lmax = s.lam[0];
  double* scal = s.vcol + r;  // norm and 1 / norm of each column (after vcol: 2p ≤ 2n doubles)
  auto finish_column = [&](i64 q, double sq) {
    const bool keep = lmax > 0 && sq > static_cast<double>(args.drop_tol) * lmax && sq > 0;
    const double norm = keep ? sqrt(sq) : 0.0;
    scal[2 * q] = norm;
    scal[2 * q + 1] = keep ? 1.0 / norm : 0.0;
  };
  auto store_basis = [&](i64 q, i64 k, double v) {
    s.bq[q * r + k] = store_rounded(basis_out, (j * r + k) * p + q, st,
                                    scal[2 * q] > 0 ? static_cast<float>(v * scal[2 * q + 1]) : 0.0f);
  };
  auto store_coef = [&](i64 q, i64 t) {
    s.cq[q * n + t] = store_rounded(coef_out, (j * p + q) * n + t, st,
                                    scal[2 * q] > 0 ? static_cast<float>(scal[2 * q] * w[q * n + t]) : 0.0f);
  };
  if constexpr (Team::serial) {
    // Column by column, its r sums side by side over the tasks in order (contiguous rows of
    // the transposed inputs), kept unnormalised in bq; then every column's squared norm, the
    // p sums side by side, each in order of k. Values are rounded to the stored dtype together
    // at the end (the same rounding, one loop per dtype).
    float* vq = s.bq;
    double* v = reinterpret_cast<double*>(s.xc);  // xc is not needed any more (room: p × r)
    double sq[kRmmMaxTasks];
    // Eight rows k at a time, every column's sums of them side by side: each input widened
    // once for all the columns (each sum still over the tasks in order from zero).
    // (Columns four at a time: their sums stay in registers.)
    const auto columns = [&](i64 q0, i64 k0, auto width, auto count) {
      constexpr int W = decltype(width)::value, Q = decltype(count)::value;
      double acc[Q][W];
      for (int q = 0; q < Q; ++q)
        for (int kk = 0; kk < W; ++kk) acc[q][kk] = 0;
      for (i64 t = 0; t < n; ++t) {
        double x[W];
        for (int kk = 0; kk < W; ++kk) x[kk] = static_cast<double>(s.xct[t * r + k0 + kk]);
        for (int q = 0; q < Q; ++q) {
          const double wt = w[(q0 + q) * n + t];
          for (int kk = 0; kk < W; ++kk) acc[q][kk] += x[kk] * wt;
        }
      }
      for (int q = 0; q < Q; ++q)
        for (int kk = 0; kk < W; ++kk) v[(q0 + q) * r + k0 + kk] = acc[q][kk];
    };
    using std::integral_constant;
    for (i64 q0 = 0; q0 < p; q0 += 4) {
      const auto rows = [&](auto count) {
        i64 k0 = 0;
        for (; k0 + 8 <= r; k0 += 8) columns(q0, k0, integral_constant<int, 8>{}, count);
        for (; k0 < r; ++k0) columns(q0, k0, integral_constant<int, 1>{}, count);
      };
      switch (p - q0) {
        case 1: rows(integral_constant<int, 1>{}); break;
        case 2: rows(integral_constant<int, 2>{}); break;
        case 3: rows(integral_constant<int, 3>{}); break;
        default: rows(integral_constant<int, 4>{}); break;
      }
    }
    for (i64 q = 0; q < p; ++q) sq[q] = 0;
    for (i64 k = 0; k < r; ++k)
      for (i64 q = 0; q < p; ++q) sq[q] += v[q * r + k] * v[q * r + k];
    for (i64 q = 0; q < p; ++q) {
      finish_column(q, sq[q]);
      const double norm = scal[2 * q], inv = scal[2 * q + 1];
      for (i64 k = 0; k < r; ++k) vq[q * r + k] = norm > 0 ? static_cast<float>(v[q * r + k] * inv) : 0.0f;
      for (i64 t = 0; t < n; ++t) s.cq[q * n + t] = norm > 0 ? static_cast<float>(norm * w[q * n + t]) : 0.0f;
    }
    round_in_place(s.bq, p * r, st);
    for (i64 k = 0; k < r; ++k)
      for (i64 q = 0; q < p; ++q) store_exact(basis_out, (j * r + k) * p + q, st, s.bq[q * r + k]);
    store_rounded_all(coef_out, j * p * n, st, p * n, [&](i64 i) -> float& { return s.cq[i]; });
  } else {
    for (i64 q = 0; q < p; ++q) {
      team_for(team, r, [&](i64 k) {
        double v = 0;
        for (i64 t = 0; t < n; ++t) v += static_cast<double>(pos.centred(t, k)) * w[q * n + t];
        s.vcol[k] = v;
      });
      team.sync();
      if (team.lane() == 0) {
        double sq = 0;
        for (i64 k = 0; k < r; ++k) sq += s.vcol[k] * s.vcol[k];
        finish_column(q, sq);
      }
      team.sync();
      team_for(team, r, [&](i64 k) { store_basis(q, k, s.vcol[k]); });
      team_for(team, n, [&](i64 t) { store_coef(q, t); });
      team.sync();
    }
  }

  // 7. x̂ from the stored values, in f64 (each sum over q in order), and D = x̂ − x. A lane
  // alone keeps a task's r sums side by side, so the inner loops run over contiguous values.
  if constexpr (Team::serial) {
    double xh[kRmmMaxRank];
    for (i64 t = 0; t < n; ++t) {
      for (i64 k = 0; k < r; ++k) xh[k] = s.muq[k];
      for (i64 q = 0; q < p; ++q) {
        const double c = s.cq[q * n + t];
        const float* bq = s.bq + q * r;
        for (i64 k = 0; k < r; ++k) xh[k] += static_cast<double>(bq[k]) * c;
      }
      float* d = ext + ext_at(t, 0, 1);
      for (i64 k = 0; k < r; ++k)
        d[k] = static_cast<float>(xh[k] - static_cast<double>(s.x[t * r + k]));
    }
  } else {
    team_for2(team, n, r, [&](i64 t, i64 k) {
      double xh = s.muq[k];
      for (i64 q = 0; q < p; ++q)
        xh += static_cast<double>(s.bq[q * r + k]) * static_cast<double>(s.cq[q * n + t]);
      ext[ext_at(t, k, 1)] = static_cast<float>(xh - static_cast<double>(pos.x_at(t, k)));
    });
  }
}

/// RMM of position j of side `side` by `team`: rmm_prepare, the eigensolver (rmm_jacobi),
/// rmm_finish. (The CPU runs the eigensolver of several positions in lockstep instead.)
template <class Team, int kTasks = 0>
REVMERGE_HD_INLINE void rmm_position(const Team& team, const RmmModuleArgs& args, int side, i64 j,
                                     void* scratch) {
  const i64 n = kTasks ? kTasks : args.n;
  const RmmScratch s = RmmScratch::carve(scratch, n, args.r, args.p, Team::serial);
  const bool poisoned = rmm_prepare<Team, kTasks>(team, args, side, j, scratch);
  const bool converged =
      poisoned || rmm_jacobi(team, s.g, s.vt, rmm_jacobi_order(n), s.rot, s.pairs, s.scal);
  rmm_finish<Team, kTasks>(team, args, side, j, scratch, converged);
}

}  // namespace revmerge::kernels
