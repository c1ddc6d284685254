#pragma once
// One tensor's merge on a backend (combine_on_backend.hpp): its pieces read from the files'
// bytes, widened and checked on the device, merged there by a method's steps, and handed to the
// sink chunk by chunk. CombineOnBackend::merge sets it up for the tensor and picks the method;
// the methods are in tensor_on_backend.cpp, the reading and the handing over in
// combine_on_backend.cpp.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "kernels/elementwise.hpp"
#include "methods/classic/combine_on_backend.hpp"
#include "methods/classic/piece_merge.hpp"

namespace revmerge {

// The buffers a merge keeps from tensor to tensor, and its stream.
struct CombineOnBackend::State {
  State(Backend& b, std::size_t tasks, bool base) : backend(b), stream(b.create_stream()), n(tasks), has_base(base) {}
  Backend& backend;
  Stream stream;
  std::size_t n;
  bool has_base;
  std::int64_t piece = 1;
  DeviceBuffer raw, stack, base, out, first_bad, weights;
  DeviceBuffer keep;  // DELLA's decisions for a piece (a byte per element), made when first needed
  DeviceBuffer ties[kernels::kMaxTrimRules], allowances[kernels::kMaxTrimRules];
  // The copies in and out go in chunks through two pinned slots each, so that the host fills one
  // (from the page cache) or empties one (into the writer) while the other is on the bus.
  DeviceBuffer staging[2], out_host[2];
  Event uploaded[2];
  std::size_t uploads = 0;  // chunks uploaded so far: the next goes through slot uploads % 2
  std::int64_t chunk = 1;            // elements of a chunk through the slots
};

struct TensorOnBackend {
  using State = CombineOnBackend::State;
  using Sink = std::function<void(std::uint64_t, std::span<const float>)>;

  State& s;
  Backend& b;
  const ClassicMergeOptions& o;
  const std::string& name;
  const std::vector<std::int64_t>& shape;
  const TensorSources& src;
  const Sink& sink;
  std::int64_t numel, n;
  int threads;
  NuslerpPlan along;
  bool della;
  std::int64_t row;  ///< elements a piece keeps whole (a row, a group of rows), 0: any
  std::vector<const CheckpointTensor*> inputs;  ///< tasks 0 … n − 1, then the base
  std::vector<std::string> where;               ///< the inputs, for messages
  kernels::ElementwiseStep widen;               ///< the files' bytes to f32 values and task vectors
  std::int64_t piece, chunk;
  std::int64_t count = 0;  ///< elements of the piece read last
  bool one_piece = false;  ///< the tensor is one piece, read once before the methods' passes

  /// The piece at `first` into s.stack and s.base.
  void read(std::int64_t first);
  /// Task t's values of the piece read last (backend memory).
  float* task(std::int64_t t) const { return static_cast<float*>(s.stack.data()) + t * count; }
  /// The merged piece at `first` (in s.out, by `step`) to the sink.
  void emit(kernels::ElementwiseStep step, std::int64_t first);

  void blend_two_models();
  void nuslerp();
  void sphere();
  void passthrough();
  void stock();
  void fusion();
  void ram();
  void combine_tasks();
  void select_by_variance(kernels::ElementwiseStep combine);
};

}  // namespace revmerge
