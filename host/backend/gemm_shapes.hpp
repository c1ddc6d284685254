#pragma once
// Shape checks shared by every backend's gemm: one message format, one place.
#include <algorithm>
#include <string>

#include "backend/backend.hpp"
#include "revmerge/error.hpp"

namespace revmerge::detail {

/// Rows and columns of op(m).
inline std::int64_t op_rows(Op op, const MatBatch& m) { return op == Op::none ? m.rows : m.cols; }
inline std::int64_t op_cols(Op op, const MatBatch& m) { return op == Op::none ? m.cols : m.rows; }

/// Throws shape_error unless op(A) · op(B) fits C and the batches agree (or broadcast).
inline void check_gemm(Op op_a, Op op_b, const MatBatch& a, const MatBatch& b, const MatBatch& c) {
  const bool ok = op_rows(op_a, a) == c.rows && op_cols(op_b, b) == c.cols &&
                  op_cols(op_a, a) == op_rows(op_b, b) && (a.batch == c.batch || a.batch == 1) &&
                  (b.batch == c.batch || b.batch == 1) && a.ld >= a.cols && b.ld >= b.cols &&
                  c.ld >= c.cols;
  if (!ok)
    throw shape_error("gemm: op(A) " + std::to_string(op_rows(op_a, a)) + "×" +
                      std::to_string(op_cols(op_a, a)) + " (batch " + std::to_string(a.batch) +
                      ") · op(B) " + std::to_string(op_rows(op_b, b)) + "×" +
                      std::to_string(op_cols(op_b, b)) + " (batch " + std::to_string(b.batch) +
                      ") does not fit C " + std::to_string(c.rows) + "×" + std::to_string(c.cols) +
                      " (batch " + std::to_string(c.batch) + ")");
}

/// Split-K pieces for a batch of rows × cols products over `inner`: the largest divisor of
/// `inner` not above the backend's split_k_hint, so every piece is whole (no padding to zero).
inline std::int64_t whole_split_k(const Backend& be, std::int64_t batch, std::int64_t rows, std::int64_t cols,
                                  std::int64_t inner) {
  const std::int64_t hint = std::clamp<std::int64_t>(be.split_k_hint(batch, rows, cols, inner), 1, inner);
  for (std::int64_t c = hint; c > 1; --c)
    if (inner % c == 0) return c;
  return 1;
}

}  // namespace revmerge::detail
