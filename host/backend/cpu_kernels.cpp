// The CPU backend's element-wise work: the shared functors run by Thrust's OpenMP system.
// Compiled with THRUST_DEVICE_SYSTEM=OMP by the host compiler (never by nvcc).
#include <omp.h>

#include <algorithm>

#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/system/omp/execution_policy.h>

#include "backend/cpu_backend.hpp"
#include "kernels/lowrank_kernels.hpp"
#include "kernels/rmm_kernels.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

template <class F>
void run(std::int64_t count, const F& f) {
  if (omp_in_parallel()) {  // one block of CpuBackend::parallel_blocks: this thread's work
    for (std::int64_t i = 0; i < count; ++i) f(i);
    return;
  }
  if (count > 0)
    thrust::for_each_n(thrust::omp::par, thrust::counting_iterator<std::int64_t>(0), count, f);
}

}  // namespace

void CpuBackend::permute3(const float* src, std::int64_t s0, std::int64_t s1, std::int64_t s2,
                          float* dst, std::int64_t d0, std::int64_t d1, std::int64_t d2, Stream) {
  if (s2 == 1 || d0 * d1 * d2 == 0) return run(d0 * d1, kernels::Permute3Rows{src, s0, s1, s2, d1, d2, dst});
  // A transpose: the output's rows (i2) are strided in the source. Copied in T × T tiles of
  // (f, i2), f being whichever of i0 / i1 runs along the source's shorter stride, so each
  // tile reads and writes a few whole cache lines instead of one float per line.
  using i64 = std::int64_t;
  constexpr i64 T = 32;
  const bool f_is_0 = s0 <= s1;
  const i64 df = f_is_0 ? d0 : d1, dg = f_is_0 ? d1 : d0;
  const i64 sf = f_is_0 ? s0 : s1, sg = f_is_0 ? s1 : s0;
  const i64 dsf = f_is_0 ? d1 * d2 : d2, dsg = f_is_0 ? d2 : d1 * d2;
  const i64 ftiles = (df + T - 1) / T;
#pragma omp parallel for num_threads(threads_) schedule(static) if (!omp_in_parallel())
  for (i64 w = 0; w < dg * ftiles; ++w) {
    const i64 g = w / ftiles, f0 = (w % ftiles) * T, f1 = std::min(df, f0 + T);
    const float* from = src + g * sg;
    float* to = dst + g * dsg;
    for (i64 c0 = 0; c0 < d2; c0 += T) {
      const i64 c1 = std::min(d2, c0 + T);
      for (i64 f = f0; f < f1; ++f)
        for (i64 c = c0; c < c1; ++c) to[f * dsf + c] = from[f * sf + c * s2];
    }
  }
}

void CpuBackend::center_rows(float* x, float* mean, std::int64_t rows, std::int64_t n, Stream) {
  run(rows, kernels::CenterRows{x, mean, n});
}

namespace {

// One call per row (the GPU's functor takes one element each, with a division per element).
struct BroadcastRowWise {
  const float* value;
  float* out;
  std::int64_t n;
  void operator()(std::int64_t row) const { std::fill(out + row * n, out + (row + 1) * n, value[row]); }
};

}  // namespace

void CpuBackend::broadcast_rows(const float* value, float* out, std::int64_t rows, std::int64_t n,
                                Stream) {
  run(rows, BroadcastRowWise{value, out, n});
}

void CpuBackend::select_top(const float* eigvecs, float* wp, std::int64_t batch, std::int64_t n,
                            std::int64_t p, Stream) {
  run(batch * p, kernels::SelectTop{eigvecs, wp, n, p});
}

void CpuBackend::normalize_basis(float* v, const float* wp, float* c, const float* eigenvalues,
                                 std::int64_t batch, std::int64_t r, std::int64_t n,
                                 std::int64_t p, float rel_tol, Stream) {
  run(batch * p, kernels::NormalizeBasis{v, wp, c, eigenvalues, r, n, p, rel_tol});
}

void CpuBackend::mask_nonfinite(float* gram, float* mark, std::int64_t batch, std::int64_t n,
                                Stream) {
  run(batch, kernels::MaskNonfinite{gram, mark, n});
}

void CpuBackend::poison_marked(const float* mark, float* mean, float* basis, float* coef,
                               std::int64_t batch, std::int64_t r, std::int64_t p, std::int64_t n,
                               Stream) {
  run(batch, kernels::PoisonMarked{mark, mean, basis, coef, r, p, n});
}

void CpuBackend::subtract(const float* x, const float* y, float* out, std::int64_t count,
                          Stream) {
  run(count, kernels::Subtract{x, y, out});
}

void CpuBackend::batched_dot(const float* x, const float* y, double* out, std::int64_t batch,
                             std::int64_t count, Stream) {
  run(batch, kernels::BatchedDot{x, y, out, count});
}

void CpuBackend::column_sums(const float* x, double* out, std::int64_t batch, std::int64_t n,
                             Stream) {
  run(n, kernels::ColumnSums{x, out, batch, n});
}

void CpuBackend::round_to(float* x, std::int64_t count, DType dtype, Stream) {
  switch (dtype) {
    case DType::F32:
      return;
    case DType::BF16:
      return run(count, kernels::RoundToBf16{x});
    case DType::F16:
      return run(count, kernels::RoundToF16{x});
    default:
      throw unsupported_error("round_to: results are stored as F32, F16 or BF16, not " +
                              std::string(dtype_name(dtype)));
  }
}

void CpuBackend::lora_stacks_f64(const double* u, const double* v, const double* s,
                                 std::int64_t tasks, std::int64_t in, std::int64_t out,
                                 std::int64_t k, std::int64_t r, float* a, float* b, Stream) {
  run(tasks * r * in, kernels::LoraStackA{u, in, k, r, a});
  run(tasks * out * r, kernels::LoraStackB{v, s, out, k, r, b});
}

}  // namespace revmerge
