// The CPU backend's RMM candidates (kernels/rmm_candidates.hpp): each task on one thread, its
// positions in blocks that stay in cache while every candidate's differences are made from the
// last one's (x̂ carried over: the same sums as from the start) and one single-precision GEMM
// per candidate reads them; each block's product added in f64 in block order.
#include <algorithm>
#include <vector>

#include "backend/cpu_backend.hpp"
#include "backend/cpu_parallel.hpp"
#include "kernels/rmm_candidates.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Positions per block: x̂ (f64) and the rows [D | x] (f32) of 256 positions at rank 64 are
// 256 KiB together, within a core's L2.
constexpr i64 kBlock = 256;

// A thread's block of positions.
struct Block {
  const float* dirs = nullptr;  // P × len × r: direction q at position j at dirs[(q · len + j) · r]
  std::vector<float> coef;  // len × P: task t's coefficients
  std::vector<double> xh;   // len × r: x̂ so far
  std::vector<float> rows;  // len × 2r: [D | x]
};

// x̂ of every (j, k) of the block advanced from `from` directions to `to`: per element the sums
// of kernels::rmm_candidate_advance in the same order, the loop over k innermost so it runs on
// vector lanes (the same IEEE operations, no contraction: the same bits).
#if defined(__x86_64__)
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
#endif
void advance_block(Block& b, i64 len, i64 r, i64 P, i64 from, i64 to) {
  for (i64 j = 0; j < len; ++j) {
    double* h = b.xh.data() + j * r;
    for (i64 q = from; q < to; ++q) {
      const double c = b.coef[j * P + q];
      const float* v = b.dirs + (q * len + j) * r;
      for (i64 k = 0; k < r; ++k) h[k] += static_cast<double>(v[k]) * c;
    }
    float* row = b.rows.data() + j * 2 * r;
    for (i64 k = 0; k < r; ++k) row[k] = kernels::rmm_candidate_difference(h[k], row[r + k]);
  }
}

// Task t's Grams; `dirs` is the side's basis widened, block by block of kBlock positions, each
// block's direction 0 of every position, then direction 1, …: a step from one candidate to the
// next reads one contiguous run (by position it read a 256-byte piece every P · r floats, most
// of the routine's time spent waiting on those loads).
void candidate_task(const kernels::RmmCandidateArgs& a, const float* dirs, i64 t) {
  const i64 r = a.r, P = a.stored_p, per = 2 * r * r, most = std::min(a.m, kBlock);
  Block b;
  b.coef.resize(static_cast<std::size_t>(most * P));
  b.xh.resize(static_cast<std::size_t>(most * r));
  b.rows.resize(static_cast<std::size_t>(most * 2 * r));
  std::vector<float> piece(static_cast<std::size_t>(per));
  for (i64 i = 0; i < a.count; ++i) std::fill_n(a.grams + (i * a.n + t) * per, per, 0.0);
  for (i64 j0 = 0; j0 < a.m; j0 += kBlock) {
    const i64 len = std::min(a.m, j0 + kBlock) - j0;
    b.dirs = dirs + j0 * P * r;
    for (i64 j = 0; j < len; ++j) {
      for (i64 k = 0; k < r; ++k) {
        b.xh[j * r + k] = kernels::rmm_candidate_mean(a, j0 + j, k);
        b.rows[j * 2 * r + r + k] = kernels::rmm_candidate_x(a, t, j0 + j, k);
      }
      for (i64 q = 0; q < P; ++q)
        b.coef[j * P + q] = kernels::load_as_f32(a.coef, ((j0 + j) * P + q) * a.n + t, a.storage);
    }
    i64 done = 0;  // directions already in x̂
    for (i64 i = 0; i < a.count; ++i) {
      advance_block(b, len, r, P, done, a.ps[i]);
      done = a.ps[i];
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(r),
                  static_cast<int>(2 * r), static_cast<int>(len), 1.0f, b.rows.data(),
                  static_cast<int>(2 * r), b.rows.data(), static_cast<int>(2 * r), 0.0f,
                  piece.data(), static_cast<int>(2 * r));
      double* g = a.grams + (i * a.n + t) * per;
      for (i64 e = 0; e < per; ++e) g[e] += piece[e];
    }
  }
}

}  // namespace

void CpuBackend::rmm_candidate_grams(const kernels::RmmCandidateArgs& args, Stream) {
  cpu::keep_blas_single_threaded();
  const i64 r = args.r, P = args.stored_p;
  // From the pool, every element written below: a fresh vector's pages would each be faulted
  // in and zeroed first.
  const DeviceBuffer buffer = allocate(static_cast<std::size_t>(args.m * P * r) * sizeof(float));
  float* dirs = buffer.f32();
  cpu::parallel_for(threads_, args.m, [&](i64 j) {
    const i64 j0 = j / kBlock * kBlock, len = std::min(args.m, j0 + kBlock) - j0;
    float* block = dirs + j0 * P * r;
    for (i64 k = 0; k < r; ++k)
      for (i64 q = 0; q < P; ++q)
        block[(q * len + j - j0) * r + k] = kernels::load_as_f32(args.basis, (j * r + k) * P + q, args.storage);
  });
  cpu::parallel_for(threads_, args.n, [&](i64 t) { candidate_task(args, dirs, t); });
}

}  // namespace revmerge
