// The CUDA backend's f64 group (the PT-SVD of full fine-tunes): cuBLAS and cuSOLVER on library
// handles of the caller's stream, and the element-wise kernels. f64 GEMMs run on the FP64
// tensor cores where the GPU has them: cuBLAS's default math mode keeps them IEEE double (TF32
// concerns f32 only).
#include <cuda_fp16.h>
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/system/cuda/execution_policy.h>

#include <algorithm>

#include "cuda_backend_impl.cuh"
#include "cuda_check.hpp"
#include "kernels/counter_rng.hpp"
#include "kernels/lowrank_kernels.hpp"

namespace revmerge::cuda {
namespace {

using i64 = std::int64_t;

template <class F>
void for_each_index(cudaStream_t st, i64 count, const F& f) {
  if (count <= 0) return;
  thrust::for_each_n(thrust::cuda::par_nosync.on(st), thrust::counting_iterator<i64>(0), count, f);
  REVMERGE_CUDA_CHECK(cudaGetLastError());
}

__device__ double load_value(const void* p, DType dtype, i64 i) {
  switch (dtype) {
    case DType::F64: return static_cast<const double*>(p)[i];
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::BF16:
      return __uint_as_float(static_cast<unsigned>(static_cast<const unsigned short*>(p)[i]) << 16);
    default: return __half2float(static_cast<const __half*>(p)[i]);  // F16
  }
}

struct FormDelta {
  const void* ft;
  DType ft_dtype;
  const void* base;
  DType base_dtype;
  double* delta;
  unsigned long long* first_bad;
  __device__ void operator()(i64 i) const {
    const double d = load_value(ft, ft_dtype, i) - load_value(base, base_dtype, i);
    delta[i] = d;
    if (!isfinite(d)) atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
};

struct FillGaussian {
  double* out;
  std::uint64_t seed, stream;
  __device__ void operator()(i64 i) const {
    out[i] = kernels::counter_normal(seed, stream, static_cast<std::uint64_t>(i));
  }
};

struct FillIdentity {  // a batch of packed n × n identities
  double* out;
  i64 n;
  __device__ void operator()(i64 i) const {
    const i64 e = i % (n * n);
    out[i] = e % n == e / n ? 1.0 : 0.0;
  }
};

struct WidenF32 {  // y[i] = x[i], f32 to f64 (exact)
  const float* x;
  double* y;
  __device__ void operator()(i64 i) const { y[i] = x[i]; }
};

struct MirrorUpper {  // n × n row-major: the lower triangle from the upper, bitwise
  double* g;
  i64 n;
  __device__ void operator()(i64 idx) const {
    const i64 i = idx / n, j = idx % n;
    if (j < i) g[i * n + j] = g[j * n + i];
  }
};

struct Transpose {  // out = inᵀ, n × n
  const double* in;
  double* out;
  i64 n;
  __device__ void operator()(i64 idx) const { out[idx] = in[(idx % n) * n + idx / n]; }
};

struct FillPointers {  // ptrs[i] = base + i · stride: the batched solvers' matrix arguments
  double** ptrs;
  double* base;
  i64 stride;
  __device__ void operator()(i64 i) const { ptrs[i] = base + i * stride; }
};

void check_dtype(DType t, const char* which) {
  if (t != DType::F64 && t != DType::F32 && t != DType::F16 && t != DType::BF16)
    throw unsupported_error(std::string("delta_f64: the ") + which + " is " +
                            std::string(dtype_name(t)) + ", not a float type");
}

}  // namespace

void CudaBackend::gemm_f64(Op op_a, i64 rows, i64 cols, i64 inner, const double* a, i64 lda,
                           i64 stride_a, const double* b, i64 ldb, i64 stride_b, double* c,
                           i64 ldc, i64 stride_c, i64 batch, Stream s) {
  if (batch == 0 || rows == 0 || cols == 0) return;
  use_device();  // the caller may be a pipeline stage
  const auto h = handles(stream(s));
  const double one = 1.0, zero = 0.0;
  REVMERGE_CUBLAS_CHECK(cublasDgemmStridedBatched_64(
      h.blas64, op_a == Op::none ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, rows, cols, inner, &one,
      a, lda, stride_a, b, ldb, stride_b, &zero, c, ldc, stride_c, batch));
}

void CudaBackend::cholesky_inverse_f64(double* g, double* inverse, i64 n, i64 batch, int* info,
                                       Stream s) {
  if (batch == 0) return;
  use_device();
  const cudaStream_t st = stream(s);
  const auto h = handles(st, /*with_solver=*/true);
  DeviceBuffer pointers = allocate(2 * static_cast<std::size_t>(batch) * sizeof(double*));
  auto** g_ptrs = static_cast<double**>(pointers.data());
  double** inv_ptrs = g_ptrs + batch;
  for_each_index(st, batch, FillPointers{g_ptrs, g, n * n});
  for_each_index(st, batch, FillPointers{inv_ptrs, inverse, n * n});
  REVMERGE_CUSOLVER_CHECK(cusolverDnDpotrfBatched(h.solver, CUBLAS_FILL_MODE_UPPER,
                                                  static_cast<int>(n), g_ptrs, static_cast<int>(n),
                                                  info, static_cast<int>(batch)));
  // R⁻¹ = I · R⁻¹, by triangular solves of the l × l identities (exact zeros below the diagonal).
  for_each_index(st, batch * n * n, FillIdentity{inverse, n});
  const double one = 1.0;
  REVMERGE_CUBLAS_CHECK(cublasDtrsmBatched(h.blas64, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER,
                                           CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, static_cast<int>(n),
                                           static_cast<int>(n), &one, g_ptrs, static_cast<int>(n),
                                           inv_ptrs, static_cast<int>(n), static_cast<int>(batch)));
  // `pointers` goes back to the pool behind a fence: no other call gets it before these ran.
}

std::size_t CudaBackend::householder_qr_f64_work_bytes(i64 rows, i64 cols) {
  // cuSOLVER's workspace taken as two copies of the matrix, a generous stand-in for the size it
  // reports (which needs a handle, and this may be called from any thread); plus τ and two
  // status words.
  return pool_size_class(2 * static_cast<std::size_t>(rows * cols) * sizeof(double)) +
         pool_size_class(static_cast<std::size_t>(cols) * sizeof(double)) +
         pool_size_class(2 * sizeof(int));
}

void CudaBackend::householder_qr_f64(double* x, i64 rows, i64 cols, double* r_host, Stream s) {
  use_device();
  const cudaStream_t st = stream(s);
  const auto h = handles(st, /*with_solver=*/true);
  const int m = static_cast<int>(rows), n = static_cast<int>(cols);
  DeviceBuffer tau = allocate(static_cast<std::size_t>(cols) * sizeof(double));
  DeviceBuffer info = allocate(2 * sizeof(int));
  auto* tau_d = static_cast<double*>(tau.data());
  int lwork_qr = 0, lwork_q = 0;
  REVMERGE_CUSOLVER_CHECK(cusolverDnDgeqrf_bufferSize(h.solver, m, n, x, m, &lwork_qr));
  REVMERGE_CUSOLVER_CHECK(cusolverDnDorgqr_bufferSize(h.solver, m, n, n, x, m, tau_d, &lwork_q));
  const int lwork = std::max({lwork_qr, lwork_q, 1});
  DeviceBuffer work = allocate(static_cast<std::size_t>(lwork) * sizeof(double));
  auto* work_d = static_cast<double*>(work.data());
  auto* infos = static_cast<int*>(info.data());
  REVMERGE_CUSOLVER_CHECK(cusolverDnDgeqrf(h.solver, m, n, x, m, tau_d, work_d, lwork, infos));
  if (r_host)  // R: the top cols × cols of each column (the strict lower part is zeroed below)
    REVMERGE_CUDA_CHECK(cudaMemcpy2DAsync(r_host, static_cast<std::size_t>(cols) * sizeof(double),
                                          x, static_cast<std::size_t>(rows) * sizeof(double),
                                          static_cast<std::size_t>(cols) * sizeof(double),
                                          static_cast<std::size_t>(cols), cudaMemcpyDeviceToHost, st));
  REVMERGE_CUSOLVER_CHECK(cusolverDnDorgqr(h.solver, m, n, n, x, m, tau_d, work_d, lwork, infos + 1));
  int host_infos[2] = {0, 0};
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(host_infos, infos, sizeof host_infos, cudaMemcpyDeviceToHost, st));
  REVMERGE_CUDA_CHECK(cudaStreamSynchronize(st));
  if (host_infos[0] != 0 || host_infos[1] != 0)
    throw solver_error("cusolverDnDgeqrf / cusolverDnDorgqr (" + std::to_string(rows) + " × " +
                       std::to_string(cols) + ") report info " + std::to_string(host_infos[0]) +
                       " / " + std::to_string(host_infos[1]));
  if (r_host)
    for (i64 j = 0; j < cols; ++j)
      for (i64 i = j + 1; i < cols; ++i) r_host[j * cols + i] = 0.0;
}

void CudaBackend::sum_squares_f64(const double* x, i64 count, i64 batch, double* out, Stream s) {
  use_device();
  const auto h = handles(stream(s));
  // Results stay on the device: no wait for the host between the dots. The handle goes back to
  // host scalars however this ends (the GEMMs pass α and β from the host).
  REVMERGE_CUBLAS_CHECK(cublasSetPointerMode(h.blas64, CUBLAS_POINTER_MODE_DEVICE));
  struct HostScalarsAgain {
    cublasHandle_t blas;
    ~HostScalarsAgain() { cublasSetPointerMode(blas, CUBLAS_POINTER_MODE_HOST); }
  } restore{h.blas64};
  for (i64 b = 0; b < batch; ++b)
    REVMERGE_CUBLAS_CHECK(cublasDdot_64(h.blas64, count, x + b * count, 1, x + b * count, 1, out + b));
}

void CudaBackend::delta_f64(const void* ft, DType ft_type, const void* base, DType base_type,
                            double* delta, i64 count, std::uint64_t* first_bad, Stream s) {
  check_dtype(ft_type, "fine-tune");
  check_dtype(base_type, "base");
  use_device();
  static_assert(sizeof(std::uint64_t) == sizeof(unsigned long long));
  for_each_index(stream(s), count,
                 FormDelta{ft, ft_type, base, base_type, delta,
                           reinterpret_cast<unsigned long long*>(first_bad)});
}

void CudaBackend::gaussian_f64(double* out, i64 count, std::uint64_t seed, std::uint64_t stream_id,
                               Stream s) {
  use_device();
  for_each_index(stream(s), count, FillGaussian{out, seed, stream_id});
}

void CudaBackend::cholesky_qr_verdict_f64(const double* r2, const int* infos, i64 n, i64 batch,
                                          double tolerance, int* held, Stream s) {
  use_device();
  for_each_index(stream(s), batch, kernels::CholeskyQrVerdict{r2, infos, n, batch, tolerance, held});
}

void CudaBackend::lora_stacks_f64(const double* u, const double* v, const double* s, i64 tasks,
                                  i64 in, i64 out, i64 k, i64 r, float* a, float* b, Stream st) {
  use_device();
  for_each_index(stream(st), tasks * r * in, kernels::LoraStackA{u, in, k, r, a});
  for_each_index(stream(st), tasks * out * r, kernels::LoraStackB{v, s, out, k, r, b});
}

// X (rows × cols, row-major) is Xᵀ column-major with ld = cols, so G = X Xᵀ is one syrk with
// op = T; cuBLAS fills G's upper triangle (row-major), the lower is copied from it.
void CudaBackend::gram_f64(const float* x, i64 rows, i64 cols, double* g, Stream s) {
  if (rows == 0) return;
  use_device();
  const cudaStream_t st = stream(s);
  const auto h = handles(st);
  DeviceBuffer wide = allocate(static_cast<std::size_t>(std::max<i64>(rows * cols, 1)) * sizeof(double));
  auto* w = static_cast<double*>(wide.data());
  for_each_index(st, rows * cols, WidenF32{x, w});
  const double one = 1.0, zero = 0.0;
  REVMERGE_CUBLAS_CHECK(cublasDsyrk(h.blas64, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_T, static_cast<int>(rows),
                                    static_cast<int>(cols), &one, w, static_cast<int>(std::max<i64>(cols, 1)),
                                    &zero, g, static_cast<int>(rows)));
  for_each_index(st, rows * rows, MirrorUpper{g, rows});
}

// The row-major upper triangle is the column-major lower one. cuSOLVER leaves the eigenvectors
// in column-major columns, the buffer's rows: transposed back so that they are a's columns.
void CudaBackend::symmetric_eigen_f64(double* a, i64 n, double* w, int* info, Stream s) {
  use_device();
  const cudaStream_t st = stream(s);
  if (n == 0) {
    REVMERGE_CUDA_CHECK(cudaMemsetAsync(info, 0, sizeof(int), st));
    return;
  }
  const auto h = handles(st, /*with_solver=*/true);
  const int ni = static_cast<int>(n);
  int lwork = 0;
  REVMERGE_CUSOLVER_CHECK(cusolverDnDsyevd_bufferSize(h.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                                      ni, a, ni, w, &lwork));
  DeviceBuffer work = allocate(static_cast<std::size_t>(std::max(lwork, 1)) * sizeof(double));
  REVMERGE_CUSOLVER_CHECK(cusolverDnDsyevd(h.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, ni, a, ni,
                                           w, static_cast<double*>(work.data()), lwork, info));
  DeviceBuffer vectors = allocate(static_cast<std::size_t>(n * n) * sizeof(double));
  auto* v = static_cast<double*>(vectors.data());
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(v, a, static_cast<std::size_t>(n * n) * sizeof(double),
                                      cudaMemcpyDeviceToDevice, st));
  for_each_index(st, n * n, Transpose{v, a, n});
}

// Row-major C = op_a(A) op_b(B) is column-major Cᵀ = op_b(B)ᵀ op_a(A)ᵀ, and a row-major matrix
// is its transpose column-major: the operands swap, each keeping its own op.
void CudaBackend::gemm_f64_rows(Op op_a, Op op_b, i64 rows, i64 cols, i64 inner, double alpha, const double* a,
                                i64 lda, const double* b, i64 ldb, double* c, i64 ldc, Stream s) {
  if (rows == 0 || cols == 0) return;
  use_device();
  const auto h = handles(stream(s));
  const double zero = 0.0;
  REVMERGE_CUBLAS_CHECK(cublasDgemm_64(h.blas64, op_b == Op::none ? CUBLAS_OP_N : CUBLAS_OP_T,
                                       op_a == Op::none ? CUBLAS_OP_N : CUBLAS_OP_T, cols, rows, inner, &alpha, b,
                                       ldb, a, lda, &zero, c, ldc));
}

}  // namespace revmerge::cuda
