// The CPU backend's element-wise work: the shared functors run by Thrust's OpenMP system.
// Compiled with THRUST_DEVICE_SYSTEM=OMP by the host compiler (never by nvcc).
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/system/omp/execution_policy.h>

#include "backend/cpu_backend.hpp"
#include "kernels/rmm_kernels.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

template <class F>
void run(std::int64_t count, const F& f) {
  if (count > 0)
    thrust::for_each_n(thrust::omp::par, thrust::counting_iterator<std::int64_t>(0), count, f);
}

}  // namespace

void CpuBackend::permute3(const float* src, std::int64_t s0, std::int64_t s1, std::int64_t s2,
                          float* dst, std::int64_t d0, std::int64_t d1, std::int64_t d2, Stream) {
  run(d0 * d1, kernels::Permute3Rows{src, s0, s1, s2, d1, d2, dst});
}

void CpuBackend::center_rows(float* x, float* mean, std::int64_t rows, std::int64_t n, Stream) {
  run(rows, kernels::CenterRows{x, mean, n});
}

void CpuBackend::broadcast_rows(const float* value, float* out, std::int64_t rows, std::int64_t n,
                                Stream) {
  run(rows * n, kernels::BroadcastRows{value, out, n});
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

}  // namespace revmerge
