#pragma once
// What an adapter of a fine-tune's linear modules cannot carry: the fine-tune's other tensors
// (embeddings, norms, the head, a classifier it added, experts stored as 3-D tensors) where
// they differ from the base. `compress` and the merges of full fine-tunes say so, since base +
// adapter is then not the fine-tune there.
#include <set>
#include <string>
#include <vector>

#include "revmerge/compress.hpp"
#include "revmerge/hf_model.hpp"

namespace revmerge {

/// The tensors of `base` and `ft` not named in `held` (tensor names, "….weight") that differ
/// between the two: present in one only, another shape, or another value somewhere (values
/// compared exactly, across dtypes by value). Reads the tensors it compares — stopping at the
/// first difference — and drops their pages afterwards. In the base's tensor order, then the
/// fine-tune's own. Interrupted as `command` (core/interrupt.hpp) between blocks.
std::vector<UncarriedTensor> changed_tensors_left_out(const HfModel& base, const HfModel& ft,
                                                    const std::set<std::string>& held, const char* command);

/// What `compress --save-changed` keeps whole (PEFT's modules_to_save): the module of each
/// tensor in `left_out` that the fine-tune holds (changed, another shape, its own) — the
/// tensor's name without its last part — unless the adapter compresses that module (its path
/// in `compressed`) or the tensor has no module (a name without a dot). Every tensor of the
/// fine-tune directly in a kept module is kept (PEFT replaces the whole module). What is kept
/// leaves `left_out`; what stays there cannot be carried (only in the base, a linear's bias).
struct KeptWhole {
  std::vector<std::string> modules;       ///< in the order first met
  std::vector<UncarriedTensor> tensors;   ///< the fine-tune's, in its tensor order
};
KeptWhole keep_changed_modules(const HfModel& ft, std::vector<UncarriedTensor>& left_out,
                               const std::set<std::string>& compressed);

/// "3 tensors (model.embed_tokens.weight: changed, lm_head.weight: changed, score.weight: only
/// in the fine-tune)" — at most `shown` named, then how many more.
std::string describe_left_out(const std::vector<UncarriedTensor>& left_out, std::size_t shown = 4);

}  // namespace revmerge
