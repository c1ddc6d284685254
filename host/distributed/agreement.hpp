#pragma once
// How the workers of one merge (revmerge/peers.hpp) split the modules and agree on failures.
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "revmerge/peers.hpp"

namespace revmerge {

/// Runs `step` on this worker, then agrees with the others on how it went: where any worker's
/// step threw, every worker throws the error of the lowest-ranked one that failed (the same
/// error class and message), so they all leave together and nothing is committed. Without
/// peers (nullptr) it only runs `step`.
void agree_on(Peers* peers, const std::function<void()>& step);

/// The modules worker `rank` of `size` takes, [first, last) — contiguous, each worker about the
/// same bytes (`bytes[i]`: module i's), the order kept, so rank 0 takes the first ones.
std::pair<std::size_t, std::size_t> share_of(const std::vector<std::uint64_t>& bytes, int rank, int size);

}  // namespace revmerge
