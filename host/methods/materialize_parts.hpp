#pragma once
// What rebuilds a task's factors of one bundle module, as parts of kernels::materialize
// (host/kernels/materialize.hpp): one for A (rank × in), one for B (out × rank), whatever the
// module's representation. `revert`, the C interface and a resident bundle build their calls
// here, so each gives the same bits on a backend.
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/materialize.hpp"
#include "revmerge/bundle.hpp"

namespace revmerge {

/// A stored tensor where the backend reads it, in its stored dtype.
struct StoredTensor {
  const void* data = nullptr;
  kernels::ElemType type = kernels::ElemType::f32;
};

/// Finds a bundle tensor by name (its tensors as bundle_tensor_name spells them).
using StoredTensorLookup = std::function<StoredTensor(const std::string& name)>;

/// The bundle dtype as a kernel element type (f32, f16, bf16, f64); unsupported_error otherwise.
kernels::ElemType kernel_type(DType t, const std::string& where);

/// The A and B parts of task `task` (0 … tasks − 1) of module `mod` of a bundle with `n`
/// represented tasks, written to `a` and `b` as `out_type`.
std::array<kernels::MaterializePart, 2> materialize_parts(const BundleModule& mod, std::int64_t n,
                                                         std::int64_t task, const StoredTensorLookup& lookup,
                                                         void* a, void* b, kernels::ElemType out_type);

/// Numbers the parts in order (their first element and row) and returns the call's totals,
/// with `parts` pointing at `table` (where the backend reads the parts).
kernels::MaterializeArgs number_parts(std::vector<kernels::MaterializePart>& parts,
                                      const kernels::MaterializePart* table);

}  // namespace revmerge
