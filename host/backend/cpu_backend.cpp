#include "backend/cpu_backend.hpp"

#include <cblas.h>
#include <lapacke.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <vector>

#include "backend/batched_jacobi.hpp"
#include "backend/cpu_parallel.hpp"
#include "backend/gemm_shapes.hpp"
#include "core/memory_info.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

void* alloc_host(void*, std::size_t bytes) { return std::aligned_alloc(64, (bytes + 63) / 64 * 64); }
void free_host(void*, void* p) { std::free(p); }

using cpu::keep_blas_single_threaded;
using cpu::parallel_for;

}  // namespace

CpuBackend::CpuBackend(int threads)
    : threads_(threads > 0 ? threads : omp_get_num_procs()),
      pool_("cpu backend", &alloc_host, &free_host, nullptr) {
  // All parallelism is the backend's own (one matrix per thread). OpenBLAS must never split a
  // call: a team of one thread does not count as "in parallel" for it, so with --threads 1 it
  // would thread a large GEMM itself and change the summation order. This is OpenBLAS's
  // process-wide setting; revmerge never wants anything else.
  keep_blas_single_threaded();
}

void CpuBackend::parallel_blocks(std::int64_t blocks, const std::function<void(std::int64_t)>& body) {
  parallel_for(threads_, blocks, body, /*dynamic=*/true);  // blocks differ in eigensolver sweeps
}

std::string CpuBackend::name() const {
  return "cpu (OpenBLAS + LAPACKE, " + std::to_string(threads_) + " threads)";
}

std::size_t CpuBackend::memory_available() const {
  return host_memory_available() + pool_.use().cached;
}

void CpuBackend::upload(void* dst, const void* src, std::size_t bytes, Stream) {
  if (bytes) std::memcpy(dst, src, bytes);
}

void CpuBackend::download(void* dst, const void* src, std::size_t bytes, Stream) {
  if (bytes) std::memcpy(dst, src, bytes);
}

void CpuBackend::gemm(Op op_a, Op op_b, float alpha, const MatBatch& a, const MatBatch& b,
                      float beta, const MatBatch& c, Stream) {
  detail::check_gemm(op_a, op_b, a, b, c);
  keep_blas_single_threaded();
  const auto ta = op_a == Op::none ? CblasNoTrans : CblasTrans;
  const auto tb = op_b == Op::none ? CblasNoTrans : CblasTrans;
  const auto k = detail::op_cols(op_a, a);
  const std::int64_t sa = a.batch == 1 ? 0 : a.stride, sb = b.batch == 1 ? 0 : b.stride;
  // Each matrix on one thread: OpenBLAS's OpenMP build runs single-threaded inside a parallel
  // region, which keeps every product independent of the thread count.
  parallel_for(threads_, c.batch, [&](std::int64_t i) {
    cblas_sgemm(CblasRowMajor, ta, tb, static_cast<int>(c.rows), static_cast<int>(c.cols),
                static_cast<int>(k), alpha, a.data + i * sa, static_cast<int>(a.ld),
                b.data + i * sb, static_cast<int>(b.ld), beta, c.data + i * c.stride,
                static_cast<int>(c.ld));
  });
}

void CpuBackend::symmetric_eigen(const MatBatch& a, float* eigenvalues, Stream) {
  const auto n = a.rows;
  if (a.cols != n || a.ld != n)
    throw shape_error("symmetric_eigen: expects packed square matrices, got " +
                      std::to_string(a.rows) + "×" + std::to_string(a.cols) + " ld " +
                      std::to_string(a.ld));
  // Solved in double: n is small, and it keeps the small eigenvalues' directions accurate.
  // Up to kJacobiMaxN by batched Jacobi rotations (backend/batched_jacobi.hpp says why), above
  // by LAPACK's dsyevd.
  // Workspaces are per thread and reused across the batch (sizes from LAPACK's dsyevd docs).
  keep_blas_single_threaded();
  const std::size_t nn = static_cast<std::size_t>(n * n);
  const lapack_int lwork = static_cast<lapack_int>(1 + 6 * n + 2 * n * n);
  const lapack_int liwork = static_cast<lapack_int>(3 + 5 * n);
  if (n <= kJacobiMaxN) {
    // Chunks of 64 matrices per task: fixed boundaries, so results do not depend on threads.
    const std::int64_t chunk = 64, chunks = (a.batch + chunk - 1) / chunk;
    parallel_for(threads_, chunks, [&](std::int64_t c) {
      const auto bad = batched_jacobi_eigen(a.data, eigenvalues, n, c * chunk,
                                            std::min(a.batch, (c + 1) * chunk));
      if (bad >= 0)
        throw solver_error("Jacobi eigensolver did not converge on matrix " + std::to_string(bad) +
                           " of " + std::to_string(a.batch) + ", n = " + std::to_string(n));
    });
    return;
  }
  parallel_for(threads_, a.batch, [&](std::int64_t b) {
    thread_local std::vector<double> m, w, work;
    thread_local std::vector<lapack_int> iwork;
    m.resize(nn);
    w.resize(static_cast<std::size_t>(n));
    work.resize(static_cast<std::size_t>(lwork));
    iwork.resize(static_cast<std::size_t>(liwork));
    float* src = a.data + b * a.stride;
    for (std::size_t i = 0; i < nn; ++i) m[i] = src[i];
    const lapack_int info =
        LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'U', static_cast<lapack_int>(n), m.data(),
                            static_cast<lapack_int>(n), w.data(), work.data(), lwork,
                            iwork.data(), liwork);
    if (info != 0)
      throw solver_error("LAPACKE_dsyevd_work failed (info " + std::to_string(info) +
                         ") on matrix " + std::to_string(b) + " of " + std::to_string(a.batch) +
                         ", n = " + std::to_string(n));
    // Column-major eigenvectors are row-major rows: exactly the interface's layout.
    for (std::size_t i = 0; i < nn; ++i) src[i] = static_cast<float>(m[i]);
    for (std::int64_t i = 0; i < n; ++i) eigenvalues[b * n + i] = static_cast<float>(w[i]);
  });
}

std::unique_ptr<Backend> make_cpu_backend(const BackendOptions& options) {
  return std::make_unique<CpuBackend>(options.threads);
}

}  // namespace revmerge
