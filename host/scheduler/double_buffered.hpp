#pragma once
// Two buffers in turn: item i + 1 is prepared into one on a helper thread while item i is used
// from the other, so a one-core step (converting and subtracting a model's weights) hides
// behind a many-core one (an SVD on the BLAS threads). Items are used in order, on the calling
// thread. An exception from either side reaches the caller once the helper has finished (a
// std::async future waits for its task when destroyed).
#include <cstddef>
#include <future>

namespace revmerge {

/// prepare(i, buffer) → R runs on the helper; use(i, buffer, R) on the caller; buffer is 0 or 1.
template <class Prepare, class Use>
void double_buffered(std::size_t count, Prepare prepare, Use use) {
  if (count == 0) return;
  auto next = std::async(std::launch::async, prepare, std::size_t{0}, 0);
  for (std::size_t i = 0; i < count; ++i) {
    auto prepared = next.get();
    if (i + 1 < count) next = std::async(std::launch::async, prepare, i + 1, static_cast<int>((i + 1) % 2));
    use(i, static_cast<int>(i % 2), prepared);
  }
}

}  // namespace revmerge
