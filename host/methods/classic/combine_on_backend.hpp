#pragma once
// Every full-model merge on a backend — the GPU for `--device cuda`: the element-wise ones
// (linear, task arithmetic, TIES, DARE, breadcrumbs, magnitude pruning, DELLA, SCE), slerp,
// nearswap, nuslerp, multislerp, karcher, model_stock, ram / ramplus_tl, arcee_fusion and
// passthrough. Each piece of a tensor goes to the backend as the files' own bytes (16-bit stays
// 16-bit), is widened, checked and turned into task vectors there, and every statistic and
// decision of the CPU's merge (thinning.hpp's passes, combine.hpp's combine) runs there as the
// steps of kernels/elementwise.hpp: the output is the CPU merge's, bit for bit. What decides
// from the statistics (the thresholds, the rescale) is Thinning's own host code, fed the
// statistics the backend gathered.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "methods/classic/piece_merge.hpp"

namespace revmerge {

class Backend;
struct TensorOnBackend;

/// Why the merge of `options` cannot run on a backend (empty when it can): more models than
/// kernels::kMaxElementwiseInputs, or a method that only merges adapters (cat, svd).
std::string backend_combine_refusal(const ClassicMergeOptions& options);

/// One merge's work on a backend: buffers kept from tensor to tensor, one stream.
class CombineOnBackend {
 public:
  /// n tasks (and a base when `has_base`), pieces of at most `max_piece` elements (fewer where
  /// the backend's memory is short), copied to and from the backend in chunks of `chunk`
  /// elements through two pinned slots each way.
  CombineOnBackend(Backend& backend, std::size_t n, bool has_base, std::int64_t max_piece,
                   std::int64_t chunk = std::int64_t{1} << 22);
  ~CombineOnBackend();
  CombineOnBackend(const CombineOnBackend&) = delete;
  CombineOnBackend& operator=(const CombineOnBackend&) = delete;

  /// Merges one tensor (`options` with its per-tensor parameters resolved) from `sources`,
  /// giving each merged piece, in order, to `sink(first, values)`.
  void merge(const ClassicMergeOptions& options, const std::string& name, const std::vector<std::int64_t>& shape,
             const TensorSources& sources, const std::function<void(std::uint64_t, std::span<const float>)>& sink);

 private:
  friend struct TensorOnBackend;  // one tensor's merge (tensor_on_backend.hpp)
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace revmerge
