#pragma once
// One task's thinning of one tensor on a backend (thinning.hpp's Thinning, its passes run by
// kernels/elementwise.hpp steps): the statistics are gathered on the backend into arrays laid
// out as Thinning keeps them and brought over at the end of each pass, where Thinning's own
// end_pass decides; the decisions are applied on the backend. The same bits as the CPU's.
#include <cstdint>
#include <vector>

#include "backend/backend.hpp"
#include "kernels/elementwise.hpp"
#include "methods/classic/thinning.hpp"

namespace revmerge {

class ThinningOnBackend {
 public:
  /// `keep`: a byte per element of a piece, for DELLA's decisions (shared by the tasks, whose
  /// steps run one after another on `s`).
  ThinningOnBackend(Thinning& th, Backend& b, Stream s, unsigned char* keep);

  /// The rules as the steps take them.
  void set_rules(kernels::ElementwiseStep& st) const;
  /// Thinning::observe of the piece x (backend memory) at `first`.
  void observe(float* x, std::int64_t first, std::int64_t count);
  /// Thinning::end_pass, its statistics first brought over from the backend.
  void end_pass();
  /// Thinning::apply on the piece x at `first`; `ties` and `allowances` hold a count per tie
  /// chunk of the piece for each rule (backend memory, reused).
  void apply(float* x, std::int64_t first, std::int64_t count, const DeviceBuffer* ties,
             const DeviceBuffer* allowances);

 private:
  // A lane_stats step: Σ|x| (`abs`), of the drop's kept elements (`kept`), the rules' ties and
  // Σ|x| above their thresholds (`rules`).
  void lanes(kernels::ElementwiseStep st, bool abs, bool kept, bool rules);
  // DELLA's decisions for the piece x at `first` (whole groups of rows: the driver's pieces
  // are multiples of the thinning's granule) into keep_, as Thinning::della_keep makes them.
  // The norms pass and apply each rank the piece: the decisions are not kept between passes.
  unsigned char* della_keep(float* x, std::int64_t first, std::int64_t count);

  struct RuleBuffers {
    DeviceBuffer low, equal, above, left;
  };
  Thinning& th_;
  Backend& b_;
  Stream s_;
  unsigned char* keep_;
  DeviceBuffer high_, before_, after_;
  std::vector<RuleBuffers> rules_;
};

}  // namespace revmerge
