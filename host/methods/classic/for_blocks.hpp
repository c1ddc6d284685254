#pragma once
// The loop the piece mergers share to use every thread without changing any bit: a piece cut
// at fixed blocks of the tensor, each block's elements on one thread in index order. Sums kept
// per block (the statistics lanes) and walks that count per block (ties at a threshold) then
// come out the same for any thread count.
#include <algorithm>
#include <cstdint>

namespace revmerge {

/// f(c, begin, end) for every block c of `block` elements (counted from the tensor's element 0)
/// that meets elements [first, first + size), with [begin, end) the block's part of them
/// (tensor indices); the blocks on `threads` OpenMP threads (1: on the calling thread, no
/// parallel region, so that a run already on one of a team's threads may call it).
template <class F>
void for_blocks(std::int64_t first, std::int64_t size, std::int64_t block, int threads, const F& f) {
  if (size <= 0) return;
  const std::int64_t b0 = first / block, b1 = (first + size - 1) / block;
  const auto one = [&](std::int64_t c) { f(c, std::max(first, c * block), std::min(first + size, (c + 1) * block)); };
  if (threads <= 1 || b1 == b0) {
    for (std::int64_t c = b0; c <= b1; ++c) one(c);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t c = b0; c <= b1; ++c) one(c);
}

}  // namespace revmerge
