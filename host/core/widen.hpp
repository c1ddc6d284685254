#pragma once
// The files' values widened to f32 where a merge reads them: converted, checked for values that
// are not finite, and a base subtracted, in one pass over a run of elements while it is in
// cache. The full-model merges spend most of their CPU here and in rounding back (measured on
// the 2-layer 7b set: a third of a task arithmetic merge's samples), so these loops are compiled
// again for AVX2 and AVX-512 where the CPU has them — integer shifts and one f32 subtraction per
// element, the same bits on every machine.
#include <cstddef>

#include "revmerge/dtype.hpp"

namespace revmerge {

/// `count` values of `type` (a floating-point dtype; little-endian bytes at `src`) widened to
/// f32 into `dst` (f64 rounded to nearest), `minus[i]` subtracted from each where `minus` is not
/// null (`minus` must not overlap `dst`). Returns the index of the first value that is not
/// finite once widened (count: none).
std::size_t widen_finite(DType type, const void* src, float* dst, std::size_t count, const float* minus);

}  // namespace revmerge
