// The CPU's materialisation tiles for parts stored as bf16 (cpu_materialize_tiles.hpp).
#include "backend/cpu_materialize_tiles.hpp"

namespace revmerge::cpu {
REVMERGE_DEFINE_MATERIALIZE_TILE(bf16)
}  // namespace revmerge::cpu
