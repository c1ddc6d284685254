// PT-SVD on the GPU (methods/lowrank/device_svd.hpp): the deltas formed from the files' bytes,
// then the randomized SVD of a batch of them with cuBLAS and cuSOLVER, on the engine's own
// stream and handles. All in f64: on the datacenter GPUs revmerge targets an f64 GEMM runs at
// the f32 rate, and each pass over Δ (l ≈ 72 columns) is bound by memory bandwidth anyway.
//
// Layout: Δ row-major out × in is M = Δᵀ column-major m × n (m = in, n = out), cuBLAS's own
// order; every batch is strided, task t's matrix at t · stride.
#include <cuda_fp16.h>
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/system/cuda/execution_policy.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cuda_backend.hpp"
#include "cuda_backend_impl.cuh"
#include "cuda_check.hpp"
#include "kernels/counter_rng.hpp"
#include "methods/lowrank/device_svd.hpp"

namespace revmerge {
namespace cuda {
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
    default: return __half2float(static_cast<const __half*>(p)[i]);  // F16 (checked on the host)
  }
}

// Δ[i] = ft[i] − base[i] in f64; the smallest index of a non-finite difference goes to *bad.
struct FormDelta {
  const void* ft;
  DType ft_dtype;
  const void* base;
  DType base_dtype;
  double* delta;
  unsigned long long* bad;
  __device__ void operator()(i64 i) const {
    const double d = load_value(ft, ft_dtype, i) - load_value(base, base_dtype, i);
    delta[i] = d;
    if (!isfinite(d)) atomicMin(bad, static_cast<unsigned long long>(i));
  }
};

// The sketch Ω, n × l column-major: the draws randomized_svd makes on the host.
struct FillSketch {
  double* omega;
  std::uint64_t seed, stream;
  __device__ void operator()(i64 i) const {
    omega[i] = kernels::counter_normal(seed, stream, static_cast<std::uint64_t>(i));
  }
};

struct FillIdentity {  // a batch of l × l identities
  double* out;
  i64 l;
  __device__ void operator()(i64 i) const {
    const i64 e = i % (l * l);
    out[i] = e % l == e / l ? 1.0 : 0.0;
  }
};

struct FillPointers {  // ptrs[i] = base + i · stride, the batched solvers' arguments
  double** ptrs;
  double* base;
  i64 stride;
  __device__ void operator()(i64 i) const { ptrs[i] = base + i * stride; }
};

std::size_t doubles(i64 count) { return static_cast<std::size_t>(count) * sizeof(double); }

// The device blocks of one batch of `tasks`, in the order run_batch allocates them (work_bytes
// sums the same list, so the two cannot drift apart).
struct BatchShape {
  i64 tasks, m, n, l, k;
  std::size_t element_bytes;
  std::vector<std::size_t> blocks() const {
    const i64 ll = l * l;
    return {static_cast<std::size_t>(m * n) * element_bytes,  // base bytes
            static_cast<std::size_t>(m * n) * element_bytes,  // one fine-tune's bytes
            doubles(tasks * m * n),                           // Δ
            doubles(n * l),                                   // Ω
            doubles(tasks * m * l),                           // Y, then Q
            doubles(tasks * std::max(m, n) * l),              // CholeskyQR's first pass
            doubles(tasks * n * l),                           // Z, then Bᵀ, then Q₂
            doubles(3 * tasks * ll),                          // two Cholesky factors, R⁻¹
            3 * static_cast<std::size_t>(tasks) * sizeof(double*),
            static_cast<std::size_t>(tasks) * (3 * sizeof(double) + 2 * sizeof(int)),
            doubles(2 * tasks * l * k),                       // U_R, V_R
            doubles(tasks * m * k),                           // U
            doubles(tasks * n * k)};                          // V
  }
};

class CudaDeltaSvd final : public DeviceDeltaSvd {
 public:
  explicit CudaDeltaSvd(CudaBackend& be) : be_(be) {
    REVMERGE_CUDA_CHECK(cudaSetDevice(be_.device()));
    st_ = static_cast<cudaStream_t>(be_.create_stream().handle);
    REVMERGE_CUBLAS_CHECK(cublasCreate(&blas_));
    // f64 GEMMs are full IEEE double in cuBLAS's default mode, on the FP64 tensor cores where
    // the GPU has them (TF32 concerns f32 only).
    REVMERGE_CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));
    REVMERGE_CUBLAS_CHECK(cublasSetStream(blas_, st_));
    REVMERGE_CUSOLVER_CHECK(cusolverDnCreate(&solver_));
    REVMERGE_CUSOLVER_CHECK(cusolverDnSetStream(solver_, st_));
  }
  ~CudaDeltaSvd() override {
    cudaSetDevice(be_.device());
    cudaStreamSynchronize(st_);
    if (solver_) cusolverDnDestroy(solver_);
    if (blas_) cublasDestroy(blas_);
  }

  std::vector<DeltaSvd> run(const RawWeight& base, std::span<const RawWeight> fine_tunes, i64 in,
                            i64 out, const RandomizedSvdOptions& o) override;
  std::size_t work_bytes(i64 tasks, i64 in, i64 out, const RandomizedSvdOptions& o,
                         std::size_t element_bytes) const override;
  void limit_memory(std::size_t bytes) override { limit_ = bytes; }

 private:
  // The device blocks of one batch (see BatchShape::blocks).
  struct Batch {
    DeviceBuffer ft_raw, delta, omega, y, w, z, factors, pointers, scalars, small_factors, u, v;
    double** g_ptrs() const { return static_cast<double**>(pointers.data()); }
  };
  void run_batch(const DeviceBuffer& base_raw, DType base_dtype,
                 std::span<const RawWeight> fine_tunes, std::span<DeltaSvd> results,
                 const BatchShape& shape, const RandomizedSvdOptions& o);
  void gemm(cublasOperation_t op_a, i64 rows, i64 cols, i64 inner, const double* a, i64 lda,
            i64 stride_a, const double* b, i64 ldb, i64 stride_b, double* c, i64 ldc,
            i64 stride_c, i64 batch);
  void orthonormalize(Batch& b, double* x, const BatchShape& s, i64 rows,
                      std::vector<double>* r_out);
  void householder(double* x, i64 rows, i64 l, double* r_out);
  void sync() { REVMERGE_CUDA_CHECK(cudaStreamSynchronize(st_)); }

  CudaBackend& be_;
  cudaStream_t st_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
  std::size_t limit_ = std::numeric_limits<std::size_t>::max();
};

void CudaDeltaSvd::gemm(cublasOperation_t op_a, i64 rows, i64 cols, i64 inner, const double* a,
                        i64 lda, i64 stride_a, const double* b, i64 ldb, i64 stride_b, double* c,
                        i64 ldc, i64 stride_c, i64 batch) {
  const double one = 1.0, zero = 0.0;
  REVMERGE_CUBLAS_CHECK(cublasDgemmStridedBatched_64(blas_, op_a, CUBLAS_OP_N, rows, cols, inner,
                                                     &one, a, lda, stride_a, b, ldb, stride_b,
                                                     &zero, c, ldc, stride_c, batch));
}

// Householder QR of one rows × l matrix in place (cuSOLVER geqrf + orgqr); R (l × l,
// column-major, zeros below the diagonal) to the host when asked.
void CudaDeltaSvd::householder(double* x, i64 rows, i64 l, double* r_out) {
  const int m = static_cast<int>(rows), n = static_cast<int>(l);
  DeviceBuffer tau = be_.allocate(doubles(l)), info = be_.allocate(2 * sizeof(int));
  int lwork_qr = 0, lwork_q = 0;
  REVMERGE_CUSOLVER_CHECK(cusolverDnDgeqrf_bufferSize(solver_, m, n, x, m, &lwork_qr));
  REVMERGE_CUSOLVER_CHECK(cusolverDnDorgqr_bufferSize(solver_, m, n, n, x, m,
                                                      static_cast<double*>(tau.data()), &lwork_q));
  const int lwork = std::max(lwork_qr, lwork_q);
  DeviceBuffer work = be_.allocate(doubles(std::max(lwork, 1)));
  auto* infos = static_cast<int*>(info.data());
  REVMERGE_CUSOLVER_CHECK(cusolverDnDgeqrf(solver_, m, n, x, m, static_cast<double*>(tau.data()),
                                           static_cast<double*>(work.data()), lwork, infos));
  if (r_out) {
    REVMERGE_CUDA_CHECK(cudaMemcpy2DAsync(r_out, doubles(l), x, doubles(rows), doubles(l),
                                          static_cast<std::size_t>(l), cudaMemcpyDeviceToHost, st_));
  }
  REVMERGE_CUSOLVER_CHECK(cusolverDnDorgqr(solver_, m, n, n, x, m, static_cast<double*>(tau.data()),
                                           static_cast<double*>(work.data()), lwork, infos + 1));
  int host_infos[2] = {0, 0};
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(host_infos, infos, sizeof host_infos, cudaMemcpyDeviceToHost, st_));
  sync();
  if (host_infos[0] != 0 || host_infos[1] != 0)
    throw solver_error("cusolverDnDgeqrf / cusolverDnDorgqr (" + std::to_string(rows) + " × " +
                       std::to_string(l) + ") report info " + std::to_string(host_infos[0]) +
                       " / " + std::to_string(host_infos[1]));
  if (r_out)
    for (i64 j = 0; j < l; ++j)
      for (i64 i = j + 1; i < l; ++i) r_out[j * l + i] = 0.0;
}

// Replaces each rows × l matrix of the batch at `x` by an orthonormal basis of its range.
// CholeskyQR2: R₁ = chol(XᵀX), X₁ = X R₁⁻¹, R₂ = chol(X₁ᵀX₁), Q = X₁ R₂⁻¹ — GEMMs and l × l
// solves, batched. It holds while X is well enough conditioned that X₁ is nearly orthonormal,
// which R₂ shows (R₂ ≈ I); a matrix where a factorization fails or R₂ strays from I (a
// rank-deficient sketch) is redone by Householder QR from its untouched X. With `r_out`, each
// task's R (X = Q R, l × l column-major) comes back to the host.
void CudaDeltaSvd::orthonormalize(Batch& b, double* x, const BatchShape& s, i64 rows,
                                  std::vector<double>* r_out) {
  const i64 T = s.tasks, l = s.l, ll = l * l;
  auto* factors = static_cast<double*>(b.factors.data());
  double* rinv = factors + 2 * T * ll;
  double** g_ptrs = b.g_ptrs();  // 2T Cholesky factors, then T inverses
  auto* infos = reinterpret_cast<int*>(static_cast<char*>(b.scalars.data()) + doubles(3 * T));
  auto* w = static_cast<double*>(b.w.data());
  const double one = 1.0;
  for (int pass = 0; pass < 2; ++pass) {
    const double* src = pass == 0 ? x : w;
    double* g = factors + pass * T * ll;
    gemm(CUBLAS_OP_T, l, l, rows, src, rows, rows * l, src, rows, rows * l, g, l, ll, T);
    REVMERGE_CUSOLVER_CHECK(cusolverDnDpotrfBatched(solver_, CUBLAS_FILL_MODE_UPPER,
                                                    static_cast<int>(l), g_ptrs + pass * T,
                                                    static_cast<int>(l), infos + pass * T,
                                                    static_cast<int>(T)));
    for_each_index(st_, T * ll, FillIdentity{rinv, l});
    REVMERGE_CUBLAS_CHECK(cublasDtrsmBatched(
        blas_, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT,
        static_cast<int>(l), static_cast<int>(l), &one, g_ptrs + pass * T, static_cast<int>(l),
        g_ptrs + 2 * T, static_cast<int>(l), static_cast<int>(T)));
    if (pass == 0) gemm(CUBLAS_OP_N, rows, l, l, x, rows, rows * l, rinv, l, ll, w, rows, rows * l, T);
  }
  // Both factors and the solver's verdicts to the host; X is still untouched.
  DeviceBuffer host = be_.allocate_staging(doubles(2 * T * ll) + 2 * T * sizeof(int));
  auto* h_factors = static_cast<double*>(host.data());
  auto* h_infos = reinterpret_cast<int*>(h_factors + 2 * T * ll);
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(h_factors, factors, doubles(2 * T * ll), cudaMemcpyDeviceToHost, st_));
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(h_infos, infos, 2 * T * sizeof(int), cudaMemcpyDeviceToHost, st_));
  sync();
  std::vector<char> held(static_cast<std::size_t>(T));
  bool all_held = true;
  for (i64 t = 0; t < T; ++t) {
    const double* r2 = h_factors + (T + t) * ll;
    bool ok = h_infos[t] == 0 && h_infos[T + t] == 0;
    for (i64 j = 0; j < l && ok; ++j)
      for (i64 i = 0; i <= j && ok; ++i) ok = std::abs(r2[j * l + i] - (i == j ? 1.0 : 0.0)) < 0.1;
    held[t] = ok;
    all_held = all_held && ok;
  }
  // Q = X₁ R₂⁻¹ where CholeskyQR2 held (one batched GEMM when it held everywhere).
  if (all_held) {
    gemm(CUBLAS_OP_N, rows, l, l, w, rows, rows * l, rinv, l, ll, x, rows, rows * l, T);
  } else {
    for (i64 t = 0; t < T; ++t)
      if (held[t])
        gemm(CUBLAS_OP_N, rows, l, l, w + t * rows * l, rows, rows * l, rinv + t * ll, l, ll,
             x + t * rows * l, rows, rows * l, 1);
  }
  if (r_out) r_out->assign(static_cast<std::size_t>(T * ll), 0.0);
  for (i64 t = 0; t < T; ++t) {
    double* r = r_out ? r_out->data() + t * ll : nullptr;
    if (!held[t]) {
      householder(x + t * rows * l, rows, l, r);
      continue;
    }
    if (!r) continue;
    // R = R₂ R₁, both upper triangular (the lower halves of the factors are not theirs).
    const double* r1 = h_factors + t * ll;
    const double* r2 = h_factors + (T + t) * ll;
    for (i64 j = 0; j < l; ++j)
      for (i64 i = 0; i <= j; ++i) {
        double sum = 0;
        for (i64 p = i; p <= j; ++p) sum += r2[p * l + i] * r1[j * l + p];
        r[j * l + i] = sum;
      }
  }
}

void CudaDeltaSvd::run_batch(const DeviceBuffer& base_raw, DType base_dtype,
                             std::span<const RawWeight> fine_tunes, std::span<DeltaSvd> results,
                             const BatchShape& s, const RandomizedSvdOptions& o) {
  const i64 T = s.tasks, m = s.m, n = s.n, l = s.l, k = s.k, mn = m * n;
  const auto sizes = s.blocks();
  Batch b;
  b.ft_raw = be_.allocate(sizes[1]);
  b.delta = be_.allocate(sizes[2]);
  b.scalars = be_.allocate(sizes[9]);
  auto* delta = static_cast<double*>(b.delta.data());
  auto* norms = static_cast<double*>(b.scalars.data());
  double* captured = norms + T;
  auto* bad = reinterpret_cast<unsigned long long*>(norms + 2 * T);
  // Δ_t, ‖Δ_t‖² and the first non-finite element, one fine-tune's bytes on the device at a time.
  REVMERGE_CUDA_CHECK(cudaMemsetAsync(bad, 0xff, static_cast<std::size_t>(T) * sizeof(*bad), st_));
  for (i64 t = 0; t < T; ++t) {
    const auto& f = fine_tunes[t];
    REVMERGE_CUDA_CHECK(cudaMemcpyAsync(b.ft_raw.data(), f.data,
                                        static_cast<std::size_t>(mn) * dtype_size(f.dtype),
                                        cudaMemcpyHostToDevice, st_));
    for_each_index(st_, mn, FormDelta{b.ft_raw.data(), f.dtype, base_raw.data(), base_dtype,
                                      delta + t * mn, bad + t});
  }
  REVMERGE_CUBLAS_CHECK(cublasSetPointerMode(blas_, CUBLAS_POINTER_MODE_DEVICE));
  for (i64 t = 0; t < T; ++t)
    REVMERGE_CUBLAS_CHECK(cublasDdot_64(blas_, mn, delta + t * mn, 1, delta + t * mn, 1, norms + t));
  REVMERGE_CUBLAS_CHECK(cublasSetPointerMode(blas_, CUBLAS_POINTER_MODE_HOST));
  std::vector<double> h_norms(static_cast<std::size_t>(T));
  std::vector<unsigned long long> h_bad(static_cast<std::size_t>(T));
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(h_norms.data(), norms, doubles(T), cudaMemcpyDeviceToHost, st_));
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(h_bad.data(), bad, T * sizeof(*bad), cudaMemcpyDeviceToHost, st_));
  sync();
  bool any_bad = false;
  for (i64 t = 0; t < T; ++t) {
    results[t].norm_sq = h_norms[t];
    if (h_bad[t] != ~0ull) results[t].nonfinite_at = static_cast<i64>(h_bad[t]), any_bad = true;
  }
  if (any_bad || k <= 0 || l <= 0) return;

  b.omega = be_.allocate(sizes[3]);
  b.y = be_.allocate(sizes[4]);
  b.w = be_.allocate(sizes[5]);
  b.z = be_.allocate(sizes[6]);
  b.factors = be_.allocate(sizes[7]);
  b.pointers = be_.allocate(sizes[8]);
  auto* omega = static_cast<double*>(b.omega.data());
  auto* y = static_cast<double*>(b.y.data());
  auto* z = static_cast<double*>(b.z.data());
  auto* factors = static_cast<double*>(b.factors.data());
  for_each_index(st_, 3 * T, FillPointers{b.g_ptrs(), factors, l * l});
  for_each_index(st_, n * l, FillSketch{omega, o.seed, o.stream});

  // Power iterations, each product re-orthonormalised; the first multiplies Ω, shared (stride 0).
  const double* sketch = omega;
  i64 sketch_stride = 0;
  for (int it = 0; it < o.power_iterations; ++it) {
    gemm(CUBLAS_OP_N, m, l, n, delta, m, mn, sketch, n, sketch_stride, y, m, m * l, T);  // Y = M Z
    orthonormalize(b, y, s, m, nullptr);
    gemm(CUBLAS_OP_T, n, l, m, delta, m, mn, y, m, m * l, z, n, n * l, T);  // Z = Mᵀ Y
    orthonormalize(b, z, s, n, nullptr);
    sketch = z;
    sketch_stride = n * l;
  }
  gemm(CUBLAS_OP_N, m, l, n, delta, m, mn, sketch, n, sketch_stride, y, m, m * l, T);
  orthonormalize(b, y, s, m, nullptr);                                    // Q
  gemm(CUBLAS_OP_T, n, l, m, delta, m, mn, y, m, m * l, z, n, n * l, T);  // Bᵀ = Mᵀ Q
  REVMERGE_CUBLAS_CHECK(cublasSetPointerMode(blas_, CUBLAS_POINTER_MODE_DEVICE));
  for (i64 t = 0; t < T; ++t)
    REVMERGE_CUBLAS_CHECK(cublasDdot_64(blas_, n * l, z + t * n * l, 1, z + t * n * l, 1, captured + t));
  REVMERGE_CUBLAS_CHECK(cublasSetPointerMode(blas_, CUBLAS_POINTER_MODE_HOST));
  std::vector<double> r;
  orthonormalize(b, z, s, n, &r);  // Bᵀ = Q₂ R

  // B = Rᵀ Q₂ᵀ; Rᵀ = U_R S V_Rᵀ (LAPACK, l × l) gives B = U_R S (Q₂ V_R)ᵀ, so U = Q U_R and
  // V = Q₂ V_R, the first k columns of each.
  DeviceBuffer host_small = be_.allocate_staging(doubles(2 * T * l * k));
  auto* ur = static_cast<double*>(host_small.data());
  double* vr = ur + T * l * k;
  std::vector<double> rt(static_cast<std::size_t>(l * l));
  for (i64 t = 0; t < T; ++t) {
    for (i64 j = 0; j < l; ++j)
      for (i64 i = 0; i < l; ++i) rt[j * l + i] = r[t * l * l + i * l + j];
    auto& svd = results[t].svd;
    svd.k = k;
    svd.s.resize(static_cast<std::size_t>(k));
    leading_svd(rt, l, k, ur + t * l * k, svd.s.data(), vr + t * l * k);
  }
  b.small_factors = be_.allocate(sizes[10]);
  b.u = be_.allocate(sizes[11]);
  b.v = be_.allocate(sizes[12]);
  auto* d_ur = static_cast<double*>(b.small_factors.data());
  double* d_vr = d_ur + T * l * k;
  auto* u = static_cast<double*>(b.u.data());
  auto* v = static_cast<double*>(b.v.data());
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(d_ur, ur, doubles(2 * T * l * k), cudaMemcpyHostToDevice, st_));
  gemm(CUBLAS_OP_N, m, k, l, y, m, m * l, d_ur, l, l * k, u, m, m * k, T);
  gemm(CUBLAS_OP_N, n, k, l, z, n, n * l, d_vr, l, l * k, v, n, n * k, T);
  DeviceBuffer host_uv = be_.allocate_staging(doubles(T * (m + n) * k + T));
  auto* h_u = static_cast<double*>(host_uv.data());
  double* h_v = h_u + T * m * k;
  double* h_captured = h_v + T * n * k;
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(h_u, u, doubles(T * m * k), cudaMemcpyDeviceToHost, st_));
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(h_v, v, doubles(T * n * k), cudaMemcpyDeviceToHost, st_));
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(h_captured, captured, doubles(T), cudaMemcpyDeviceToHost, st_));
  sync();
  for (i64 t = 0; t < T; ++t) {
    auto& svd = results[t].svd;
    svd.u.assign(h_u + t * m * k, h_u + (t + 1) * m * k);
    svd.v.assign(h_v + t * n * k, h_v + (t + 1) * n * k);
    svd.captured = h_captured[t];
  }
}

std::size_t CudaDeltaSvd::work_bytes(i64 tasks, i64 in, i64 out, const RandomizedSvdOptions& o,
                                     std::size_t element_bytes) const {
  const i64 small = std::min(in, out);
  const i64 l = std::min(o.rank + std::max<i64>(o.oversampling, 0), small);
  const BatchShape s{tasks, in, out, l, std::min(o.rank, small), element_bytes};
  std::size_t total = 0;
  for (const auto bytes : s.blocks()) total += pool_size_class(bytes);
  // Householder QR for a matrix CholeskyQR2 does not hold: τ, two status words and cuSOLVER's
  // workspace for the taller shape, asked of cuSOLVER (no data is read to size it); should it
  // refuse, two l-column panels of the matrix are a generous stand-in.
  const int rows = static_cast<int>(std::max(in, out)), cols = static_cast<int>(l);
  int lwork_qr = 0, lwork_q = 0;
  std::size_t work = doubles(2 * i64{rows} * l);
  if (cusolverDnDgeqrf_bufferSize(solver_, rows, cols, nullptr, rows, &lwork_qr) ==
          CUSOLVER_STATUS_SUCCESS &&
      cusolverDnDorgqr_bufferSize(solver_, rows, cols, cols, nullptr, rows, nullptr, &lwork_q) ==
          CUSOLVER_STATUS_SUCCESS)
    work = doubles(std::max({lwork_qr, lwork_q, 1}));
  return total + pool_size_class(doubles(l)) + pool_size_class(2 * sizeof(int)) +
         pool_size_class(work);
}

std::vector<DeltaSvd> CudaDeltaSvd::run(const RawWeight& base, std::span<const RawWeight> fine_tunes,
                                        i64 in, i64 out, const RandomizedSvdOptions& o) {
  std::vector<DeltaSvd> results(fine_tunes.size());
  if (fine_tunes.empty() || in == 0 || out == 0) return results;
  REVMERGE_CUDA_CHECK(cudaSetDevice(be_.device()));  // the caller may be a pipeline stage
  std::size_t element = dtype_size(base.dtype);
  for (const auto& f : fine_tunes) element = std::max(element, dtype_size(f.dtype));
  const std::size_t budget = std::min(limit_, be_.memory_available());
  auto tasks = static_cast<i64>(fine_tunes.size());
  while (tasks > 1 && work_bytes(tasks, in, out, o, element) > budget) --tasks;
  const i64 small = std::min(in, out);
  DeviceBuffer base_raw = be_.allocate(static_cast<std::size_t>(in * out) * element);
  REVMERGE_CUDA_CHECK(cudaMemcpyAsync(base_raw.data(), base.data,
                                      static_cast<std::size_t>(in * out) * dtype_size(base.dtype),
                                      cudaMemcpyHostToDevice, st_));
  for (i64 first = 0; first < static_cast<i64>(fine_tunes.size()); first += tasks) {
    const i64 count = std::min<i64>(tasks, static_cast<i64>(fine_tunes.size()) - first);
    const BatchShape shape{count, in, out,
                           std::min(o.rank + std::max<i64>(o.oversampling, 0), small),
                           std::min(o.rank, small), element};
    run_batch(base_raw, base.dtype, fine_tunes.subspan(first, count),
              std::span(results).subspan(first, count), shape, o);
  }
  sync();  // every block goes back to the pool with nothing left to run on it
  return results;
}

}  // namespace
}  // namespace cuda

std::unique_ptr<DeviceDeltaSvd> make_cuda_delta_svd(Backend& backend) {
  return std::make_unique<cuda::CudaDeltaSvd>(dynamic_cast<cuda::CudaBackend&>(backend));
}

}  // namespace revmerge
