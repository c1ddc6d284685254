#include "backend/cpu_backend.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <vector>

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

void CpuBackend::copy(void* dst, const void* src, std::size_t bytes, Stream) {
  if (bytes) std::memmove(dst, src, bytes);
}

void CpuBackend::fill(void* dst, unsigned char value, std::size_t bytes, Stream) {
  if (bytes) std::memset(dst, value, bytes);
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
  if (op_a == Op::transpose && op_b == Op::none && a.data == b.data && a.ld == b.ld && sa == sb &&
      c.rows == c.cols && beta == 0.0f) {
    // A Gram XᵀX (RMM's error Grams): its upper triangle by ssyrk, half the multiplications,
    // then mirrored.
    const std::int64_t n = c.rows;
    parallel_for(threads_, c.batch, [&](std::int64_t i) {
      float* g = c.data + i * c.stride;
      cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(n), static_cast<int>(k), alpha,
                  a.data + i * sa, static_cast<int>(a.ld), beta, g, static_cast<int>(c.ld));
      for (std::int64_t x = 1; x < n; ++x)
        for (std::int64_t y = 0; y < x; ++y) g[x * c.ld + y] = g[y * c.ld + x];
    });
    return;
  }
  parallel_for(threads_, c.batch, [&](std::int64_t i) {
    cblas_sgemm(CblasRowMajor, ta, tb, static_cast<int>(c.rows), static_cast<int>(c.cols),
                static_cast<int>(k), alpha, a.data + i * sa, static_cast<int>(a.ld),
                b.data + i * sb, static_cast<int>(b.ld), beta, c.data + i * c.stride,
                static_cast<int>(c.ld));
  });
}

std::unique_ptr<Backend> make_cpu_backend(const BackendOptions& options) {
  return std::make_unique<CpuBackend>(options.threads);
}

}  // namespace revmerge
