// The CPU backend's f64 group (the PT-SVD of full fine-tunes): OpenBLAS and LAPACKE per matrix,
// one matrix per thread, and plain loops for the element-wise work.
#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "backend/cpu_backend.hpp"
#include "backend/cpu_parallel.hpp"
#include "backend/lapack_check.hpp"
#include "kernels/counter_rng.hpp"
#include "revmerge/error.hpp"

namespace revmerge {

using i64 = std::int64_t;

void CpuBackend::gemm_f64(Op op_a, i64 rows, i64 cols, i64 inner, const double* a, i64 lda,
                          i64 stride_a, const double* b, i64 ldb, i64 stride_b, double* c,
                          i64 ldc, i64 stride_c, i64 batch, Stream) {
  cpu::keep_blas_single_threaded();
  const auto ta = op_a == Op::none ? CblasNoTrans : CblasTrans;
  cpu::parallel_for(threads_, batch, [&](i64 i) {
    cblas_dgemm(CblasColMajor, ta, CblasNoTrans, static_cast<int>(rows), static_cast<int>(cols),
                static_cast<int>(inner), 1.0, a + i * stride_a, static_cast<int>(lda),
                b + i * stride_b, static_cast<int>(ldb), 0.0, c + i * stride_c,
                static_cast<int>(ldc));
  });
}

void CpuBackend::cholesky_inverse_f64(double* g, double* inverse, i64 n, i64 batch, int* info,
                                      Stream) {
  cpu::parallel_for(threads_, batch, [&](i64 t) {
    double* gt = g + t * n * n;
    double* it = inverse + t * n * n;
    info[t] = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', static_cast<int>(n), gt, static_cast<int>(n));
    if (info[t] != 0) {
      std::fill(it, it + n * n, 0.0);  // meaningless, but defined
      return;
    }
    for (i64 j = 0; j < n; ++j)
      for (i64 i = 0; i < n; ++i) it[j * n + i] = i <= j ? gt[j * n + i] : 0.0;
    const int inv = LAPACKE_dtrtri(LAPACK_COL_MAJOR, 'U', 'N', static_cast<int>(n), it,
                                   static_cast<int>(n));
    if (inv != 0) info[t] = inv;  // a zero pivot: as singular as a failed factorization
  });
}

void CpuBackend::householder_qr_f64(double* x, i64 rows, i64 cols, double* r_host, Stream) {
  std::vector<double> tau(static_cast<std::size_t>(std::max<i64>(cols, 1)));
  const int m = static_cast<int>(rows), n = static_cast<int>(cols);
  check_lapack(LAPACKE_dgeqrf(LAPACK_COL_MAJOR, m, n, x, m, tau.data()), "dgeqrf", rows, cols);
  if (r_host)
    for (i64 j = 0; j < cols; ++j)
      for (i64 i = 0; i < cols; ++i) r_host[j * cols + i] = i <= j ? x[j * rows + i] : 0.0;
  check_lapack(LAPACKE_dorgqr(LAPACK_COL_MAJOR, m, n, n, x, m, tau.data()), "dorgqr", rows, cols);
}

void CpuBackend::sum_squares_f64(const double* x, i64 count, i64 batch, double* out, Stream) {
  cpu::parallel_for(threads_, batch, [&](i64 b) {
    double sum = 0;
    for (i64 i = 0; i < count; ++i) sum += x[b * count + i] * x[b * count + i];
    out[b] = sum;
  });
}

void CpuBackend::delta_f64(const void* ft, DType ft_type, const void* base, DType base_type,
                           double* delta, i64 count, std::uint64_t* first_bad, Stream) {
  // Blocks of 64 Ki values, one per thread at a time: each converts its part of both arrays
  // (unaligned bytes allowed) and keeps the smallest index of a non-finite difference.
  constexpr i64 kBlock = 1 << 16;
  const auto* f = static_cast<const std::byte*>(ft);
  const auto* b = static_cast<const std::byte*>(base);
  const std::size_t fe = dtype_size(ft_type), be = dtype_size(base_type);
  std::atomic<std::uint64_t> bad{*first_bad};
  cpu::parallel_for(threads_, (count + kBlock - 1) / kBlock, [&](i64 block) {
    const i64 at = block * kBlock, n = std::min(kBlock, count - at);
    std::vector<double> base_part(static_cast<std::size_t>(n));
    convert_to_f64(ft_type, f + at * fe, delta + at, static_cast<std::size_t>(n));
    convert_to_f64(base_type, b + at * be, base_part.data(), static_cast<std::size_t>(n));
    i64 first = -1;
    for (i64 i = 0; i < n; ++i) {
      delta[at + i] -= base_part[i];
      if (first < 0 && !std::isfinite(delta[at + i])) first = at + i;
    }
    if (first < 0) return;
    auto seen = bad.load();
    while (static_cast<std::uint64_t>(first) < seen &&
           !bad.compare_exchange_weak(seen, static_cast<std::uint64_t>(first))) {
    }
  });
  *first_bad = bad.load();
}

void CpuBackend::gaussian_f64(double* out, i64 count, std::uint64_t seed, std::uint64_t stream_id,
                              Stream) {
  constexpr i64 kBlock = 1 << 16;
  cpu::parallel_for(threads_, (count + kBlock - 1) / kBlock, [&](i64 block) {
    const i64 end = std::min(count, (block + 1) * kBlock);
    for (i64 i = block * kBlock; i < end; ++i)
      out[i] = kernels::counter_normal(seed, stream_id, static_cast<std::uint64_t>(i));
  });
}

// The store's Grams and eigensolves run on the calling thread with BLAS's threads as the caller
// set them (each store worker pins its own count): the same calls the host made before they
// moved here, so the same bits.
void CpuBackend::gram_f64(const float* x, i64 rows, i64 cols, double* g, Stream) {
  if (rows == 0) return;
  // The widened copy comes from the pool, whose blocks the last module's calls left: tens of MB
  // for a module's stacks, which fresh each time cost a page fault and the kernel's zeroing for
  // every page.
  const DeviceBuffer buffer = allocate(static_cast<std::size_t>(rows * cols) * sizeof(double));
  double* wide = static_cast<double*>(buffer.data());
  std::copy(x, x + rows * cols, wide);
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, static_cast<int>(rows), static_cast<int>(cols), 1.0,
              wide, static_cast<int>(std::max<i64>(cols, 1)), 0.0, g, static_cast<int>(rows));
  for (i64 i = 0; i < rows; ++i)
    for (i64 j = 0; j < i; ++j) g[i * rows + j] = g[j * rows + i];
}

void CpuBackend::symmetric_eigen_f64(double* a, i64 n, double* w, int* info, Stream) {
  *info = n == 0 ? 0
                 : LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', static_cast<int>(n), a, static_cast<int>(n), w);
}

void CpuBackend::gemm_f64_rows(Op op_a, Op op_b, i64 rows, i64 cols, i64 inner, double alpha, const double* a,
                               i64 lda, const double* b, i64 ldb, double* c, i64 ldc, Stream) {
  if (rows == 0 || cols == 0) return;
  cblas_dgemm(CblasRowMajor, op_a == Op::none ? CblasNoTrans : CblasTrans,
              op_b == Op::none ? CblasNoTrans : CblasTrans, static_cast<int>(rows), static_cast<int>(cols),
              static_cast<int>(inner), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), 0.0, c,
              static_cast<int>(ldc));
}

}  // namespace revmerge
