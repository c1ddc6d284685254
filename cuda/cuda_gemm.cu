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
  use_device();
  const auto h = handles(stream(s));
  REVMERGE_CUBLAS_CHECK(cublasSgemmStridedBatched_64(
      h.blas32, to_cublas(op_b), to_cublas(op_a), c.cols, c.rows, k, &alpha, b.data, b.ld,
      b.batch == 1 ? 0 : b.stride, a.data, a.ld, a.batch == 1 ? 0 : a.stride, &beta, c.data,
      c.ld, c.stride, c.batch));
}

}  // namespace revmerge::cuda
