// The CPU backend's per-position routines (host/kernels/): positions in blocks handed out to the
// backend's threads as they free up, each position run by its thread alone (a SerialTeam) in
// that thread's scratch, which stays in its core's cache, the eigensolves of eight positions in
// lockstep on vector lanes. The arithmetic is the GPU's: the library is compiled without FMA
// contraction (host/CMakeLists.txt).
#include <algorithm>
#include <utility>
#include <vector>

#include "backend/cpu_backend.hpp"
#include "backend/cpu_parallel.hpp"
#include "kernels/rmm_errors.hpp"
#include "backend/cpu_jacobi_lanes.hpp"
#include "kernels/rmm_jacobi.hpp"
#include "kernels/rmm_position.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Positions run eight at a time: each prepared and finished on its own, their eigensolves in
// lockstep, one position per vector lane (kernels::rmm_jacobi_lanes: the same bits as alone).
constexpr int kLanes = cpu::kJacobiLanes;

// Positions per block: side A's positions of a block have their columns read together.
constexpr i64 kBlock = 32;

// Doubles of one thread's working memory: each lane's scratch, the lockstep matrices, and the
// block's A columns (kBlock × n × r floats).
i64 work_doubles(i64 n, i64 r, i64 p) {
  const i64 N = kernels::rmm_jacobi_order(n);
  return kLanes * (kernels::rmm_scratch_bytes(n, r, p, true) / 8) + 2 * N * N * kLanes +
         (kBlock * n * r + 1) / 2;
}

// Side A's positions [j0, j1) read together: for each task and row k the block's neighbouring
// columns are one run of memory (one position alone would read each row from another page, and
// rows a power of two apart fall into the same cache sets), widened into
// tile[(t · r + k) · kBlock + (j − j0)]: runs in, runs out.
void stage_a_columns(const kernels::RmmModuleArgs& args, i64 n, i64 j0, i64 j1, float* tile) {
  const i64 r = args.r, width = j1 - j0;
  for (i64 t = 0; t < n; ++t) {
    const auto& f = args.tasks[t];
    for (i64 k = 0; k < f.rank; ++k) {
      float* to = tile + (t * r + k) * kBlock;
      const i64 from = k * args.in + j0;
      switch (f.type) {  // one loop per element type, over contiguous values
        case kernels::ElemType::bf16:
          for (i64 jj = 0; jj < width; ++jj) to[jj] = kernels::load_as_f32(f.a, from + jj, kernels::ElemType::bf16);
          break;
        case kernels::ElemType::f32:
          for (i64 jj = 0; jj < width; ++jj) to[jj] = kernels::load_as_f32(f.a, from + jj, kernels::ElemType::f32);
          break;
        default:
          for (i64 jj = 0; jj < width; ++jj) to[jj] = kernels::load_as_f32(f.a, from + jj, f.type);
      }
    }
  }
}

// Positions [first, last) of the module (A's, then B's), with n fixed at compile time when
// kTasks is not 0.
template <int kTasks>
[[gnu::always_inline]] inline void positions(const kernels::RmmModuleArgs& args, i64 first,
                                             i64 last, double* work) {
  const i64 n = kTasks ? kTasks : args.n, N = kernels::rmm_jacobi_order(n);
  const i64 scratch = kernels::rmm_scratch_bytes(n, args.r, args.p, true) / 8;
  double* a = work + kLanes * scratch;
  double* vt = a + N * N * kLanes;
  auto* tile = reinterpret_cast<float*>(vt + N * N * kLanes);
  const i64 a_end = std::min(last, args.in);
  if (first < a_end) stage_a_columns(args, n, first, a_end, tile);
  const kernels::SerialTeam team;
  for (i64 g0 = first; g0 < last; g0 += kLanes) {
    const int count = static_cast<int>(std::min<i64>(kLanes, last - g0));
    bool active[kLanes], converged[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      active[l] = false;
      if (l < count) {
        const i64 g = g0 + l;
        const int side = g < args.in ? 0 : 1;
        active[l] = !kernels::rmm_prepare<kernels::SerialTeam, kTasks>(
            team, args, side, side == 0 ? g : g - args.in, work + l * scratch,
            side == 0 ? tile + (g - first) : nullptr, kBlock);
      }
      const auto s = kernels::RmmScratch::carve(work + l * scratch, n, args.r, args.p, true);
      for (i64 i = 0; i < N * N; ++i) {
        a[i * kLanes + l] = active[l] ? s.g[i] : 0.0;
        vt[i * kLanes + l] = active[l] ? s.vt[i] : 0.0;
      }
    }
    cpu::jacobi_lanes(a, vt, N, active, converged);
    for (int l = 0; l < count; ++l) {
      const auto s = kernels::RmmScratch::carve(work + l * scratch, n, args.r, args.p, true);
      for (i64 i = 0; i < N * N; ++i) s.g[i] = a[i * kLanes + l], s.vt[i] = vt[i * kLanes + l];
      const i64 g = g0 + l;
      const int side = g < args.in ? 0 : 1;
      kernels::rmm_finish<kernels::SerialTeam, kTasks>(team, args, side,
                                                       side == 0 ? g : g - args.in,
                                                       work + l * scratch, converged[l]);
    }
  }
}

// On this thread. Compiled again for AVX2 and AVX-512 where the CPU has them: wider vectors for
// the same IEEE operations (no FMA: the file is compiled without contraction), so the same bits
// on every machine. The common task counts get loops of fixed length.
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void run_positions(const kernels::RmmModuleArgs& args, i64 first, i64 last, double* work) {
  switch (args.n) {
    case 8: return positions<8>(args, first, last, work);
    default: return positions<0>(args, first, last, work);
  }
}

}  // namespace

void CpuBackend::rmm_positions(const kernels::RmmModuleArgs& args, Stream) {
  const i64 total = args.in + args.out;
  // Blocks of neighbouring positions, handed out dynamically (positions differ in Jacobi
  // sweeps).
  const auto doubles = static_cast<std::size_t>(work_doubles(args.n, args.r, args.p));
  cpu::parallel_for(
      threads_, (total + kBlock - 1) / kBlock,
      [&](i64 block) {
        thread_local std::vector<double> work;
        work.resize(doubles + 8);  // the lockstep matrices 64-byte aligned
        const auto skew = (64 - reinterpret_cast<std::uintptr_t>(work.data()) % 64) % 64 / 8;
        run_positions(args, block * kBlock, std::min(total, (block + 1) * kBlock),
                      work.data() + skew);
      },
      /*dynamic=*/true);
}

void CpuBackend::rmm_error_terms(const kernels::RmmErrorArgs& args, Stream) {
  const kernels::RmmChunkSums sums{args};
  cpu::parallel_for(threads_, kernels::rmm_error_sums_size(args), [&](i64 i) { sums(i); });
  const kernels::RmmErrorRowDots rows{args};
  cpu::parallel_for(threads_, kernels::rmm_error_row_dots_size(args), [&](i64 i) { rows(i); });
  const kernels::RmmErrorDots dots{args};
  cpu::parallel_for(threads_, args.n * (kernels::kRmmErrorTerms + 2), [&](i64 i) { dots(i); });
}

}  // namespace revmerge
