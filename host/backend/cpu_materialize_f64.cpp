// The CPU's materialisation tiles for parts stored as f64 (cpu_materialize_tiles.hpp).
#include "backend/cpu_materialize_tiles.hpp"

namespace revmerge::cpu {
REVMERGE_DEFINE_MATERIALIZE_TILE(f64)
}  // namespace revmerge::cpu
