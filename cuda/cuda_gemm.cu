// Strided-batched GEMM on cuBLAS. Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ:
// the one place where the row-major interface meets column-major BLAS.
#include "backend/gemm_shapes.hpp"
#include "cuda_backend_impl.cuh"
#include "cuda_check.hpp"

namespace revmerge::cuda {

void CudaBackend::gemm(Op op_a, Op op_b, float alpha, const MatBatch& a, const MatBatch& b,
                       float beta, const MatBatch& c, Stream s) {
  detail::check_gemm(op_a, op_b, a, b, c);
  if (c.batch == 0 || c.rows == 0 || c.cols == 0) return;
  const auto k = detail::op_cols(op_a, a);
  const auto to_cublas = [](Op op) { return op == Op::none ? CUBLAS_OP_N : CUBLAS_OP_T; };
  REVMERGE_CUBLAS_CHECK(cublasSetStream(cublas_, stream(s)));
  REVMERGE_CUBLAS_CHECK(cublasSgemmStridedBatched(
      cublas_, to_cublas(op_b), to_cublas(op_a), static_cast<int>(c.cols), static_cast<int>(c.rows),
      static_cast<int>(k), &alpha, b.data, static_cast<int>(b.ld), b.batch == 1 ? 0 : b.stride,
      a.data, static_cast<int>(a.ld), a.batch == 1 ? 0 : a.stride, &beta, c.data,
      static_cast<int>(c.ld), c.stride, static_cast<int>(c.batch)));
}

}  // namespace revmerge::cuda
