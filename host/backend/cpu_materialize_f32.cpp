// The CPU's materialisation tiles for parts stored as f32 (cpu_materialize_tiles.hpp).
#include "backend/cpu_materialize_tiles.hpp"

namespace revmerge::cpu {
REVMERGE_DEFINE_MATERIALIZE_TILE(f32)
}  // namespace revmerge::cpu
