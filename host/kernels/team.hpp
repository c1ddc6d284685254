#pragma once
// Teams: the lanes that run one per-position routine together. On a CPU thread a team is one
// lane (SerialTeam); on a GPU a warp or a block of threads (cuda/), and in the tests a set of
// host threads (tests/kernels/thread_team.hpp). A routine written against a team computes each
// value on exactly one lane with the same operations whatever the team's size, so every team
// gives the same bits. sync() is a barrier that orders the lanes' memory; any(pred) is one too,
// and tells every lane whether pred held on any lane.
#include <cstdint>

#include "kernels/host_device.hpp"

namespace revmerge::kernels {

using i64 = std::int64_t;

/// A lane on its own: the CPU's team. `serial` lets a routine run loops in another order where
/// that gives the same sums (faster on a CPU, with whole rows in vectors).
struct SerialTeam {
  static constexpr bool serial = true;
  REVMERGE_HD int lane() const { return 0; }
  REVMERGE_HD int lanes() const { return 1; }
  REVMERGE_HD void sync() const {}
  REVMERGE_HD bool any(bool pred) const { return pred; }
};

// A team's loops cover one position's work — counts far inside an int, which a GPU steps in
// one instruction where an i64 takes two and two registers.

/// f(i) for i in [0, count), split over the team's lanes.
template <class Team, class F>
REVMERGE_HD_INLINE void team_for(const Team& team, i64 count, F&& f) {
  const int n = static_cast<int>(count);
  for (int i = team.lane(); i < n; i += team.lanes()) f(i);
}

/// A lane's walk over the items lane, lane + lanes, … of a grid of rows of `cols` items, in
/// row-major order: (a, b) stepped on without dividing — a GPU has no integer divider, and a
/// division per item (~25 instructions) cost more than most items' own work.
struct TeamGridWalk {
  int a, b, da, db, cols;
  template <class Team>
  REVMERGE_HD TeamGridWalk(const Team& team, i64 cols_)
      : cols(static_cast<int>(cols_)) {
    a = team.lane() / cols, b = team.lane() % cols;
    da = team.lanes() / cols, db = team.lanes() % cols;
  }
  REVMERGE_HD void next() {
    a += da, b += db;
    if (b >= cols) b -= cols, ++a;
  }
};

/// f(a, b) for a in [0, rows), b in [0, cols), split over the team's lanes: lane l takes the
/// items l, l + lanes, … of the row-major order. A lane alone runs plain nested loops.
template <class Team, class F>
REVMERGE_HD_INLINE void team_for2(const Team& team, i64 rows, i64 cols, F&& f) {
  if constexpr (Team::serial) {
    for (i64 a = 0; a < rows; ++a)
      for (i64 b = 0; b < cols; ++b) f(a, b);
  } else {
    if (rows <= 0 || cols <= 0) return;
    for (TeamGridWalk w(team, cols); w.a < rows; w.next()) f(w.a, w.b);
  }
}

/// team_for2 for a gather from memory: each lane loads kBatch of its items (load(a, b) for
/// a < rows, nothing past) before it stores any of them (store(a, b, v)), so their loads are
/// in flight together — a store through a pointer that might alias the source would otherwise
/// hold the next load back until it is done.
template <int kBatch, class Team, class Load, class Store>
REVMERGE_HD_INLINE void team_gather2(const Team& team, i64 rows, i64 cols, Load&& load,
                                     Store&& store) {
  if (rows <= 0 || cols <= 0) return;
  for (TeamGridWalk w(team, cols); w.a < rows;) {
    const TeamGridWalk first = w;
    float v[kBatch];
    for (int u = 0; u < kBatch; ++u, w.next()) v[u] = w.a < rows ? load(w.a, w.b) : 0.0f;
    w = first;
    for (int u = 0; u < kBatch; ++u, w.next())
      if (w.a < rows) store(w.a, w.b, v[u]);
  }
}

/// *at = min(*at, v), atomically: the result does not depend on which lane or thread came first.
REVMERGE_HD inline void atomic_min_u64(unsigned long long* at, unsigned long long v) {
#ifdef __CUDA_ARCH__
  atomicMin(at, v);
#else
  unsigned long long cur = __atomic_load_n(at, __ATOMIC_RELAXED);
  while (v < cur &&
         !__atomic_compare_exchange_n(at, &cur, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
#endif
}

}  // namespace revmerge::kernels
