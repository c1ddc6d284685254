#pragma once
// How the workers of one merge (revmerge/peers.hpp) split the modules and agree on failures.
#include <cstdint>
#include <exception>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include "revmerge/peers.hpp"

namespace revmerge {

/// `peers` when they are several workers, else null (one worker is this process alone).
inline Peers* several(Peers* peers) { return peers && peers->size() > 1 ? peers : nullptr; }

/// Runs `work` as `count` workers, worker 0 on this thread and the others on threads of their
/// own, each a worker of local_peers(count) — or, with `outer` of several processes (MPI
/// ranks), of nested_peers(*outer, count): every thread of every process one worker — and
/// returns worker 0's result; where they failed (together, having agreed), the first worker's
/// error is rethrown once all have stopped.
template <class Result>
Result on_local_workers(int count, const std::function<Result(Peers&)>& work, Peers* outer = nullptr) {
  auto peers = several(outer) ? nested_peers(*outer, count) : local_peers(count);
  std::vector<Result> results(static_cast<std::size_t>(count));
  std::vector<std::exception_ptr> failed(static_cast<std::size_t>(count));
  const auto run = [&](std::size_t i) {
    try {
      results[i] = work(*peers[i]);
    } catch (...) {
      failed[i] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < peers.size(); ++i) threads.emplace_back(run, i);
  run(0);  // on this thread: the one that may call MPI (initialised MPI_THREAD_FUNNELED)
  for (auto& t : threads) t.join();
  for (const auto& e : failed)
    if (e) std::rethrow_exception(e);
  return std::move(results.front());
}

/// Runs `step` on this worker, then agrees with the others on how it went: where any worker's
/// step threw, every worker throws the error of the lowest-ranked one that failed (the same
/// error class and message), so they all leave together and nothing is committed. Without
/// peers (nullptr) it only runs `step`.
void agree_on(Peers* peers, const std::function<void()>& step);

/// The modules worker `rank` of `size` takes, [first, last) — contiguous, each worker about the
/// same bytes (`bytes[i]`: module i's), the order kept, so rank 0 takes the first ones.
std::pair<std::size_t, std::size_t> share_of(const std::vector<std::uint64_t>& bytes, int rank, int size);

}  // namespace revmerge
