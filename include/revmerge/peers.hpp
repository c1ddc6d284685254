#pragma once
/// \file
/// Several workers running one merge together: MPI ranks (`mpirun -n N revmerge merge …`), or
/// threads of one process (one per GPU). Each worker merges its share of the modules and writes
/// its tensors into the one output file; the first worker gathers the modules' statistics and
/// commits. They exchange nothing but a few kilobytes through `all_gather`.
#include <memory>
#include <string>
#include <vector>

namespace revmerge {

/// The workers of one merge, as one of them sees them. Every worker calls the same collectives
/// in the same order.
class Peers {
 public:
  virtual ~Peers() = default;
  /// This worker's number, 0 .. size() − 1; worker 0 commits the output.
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// This worker's number among the workers on its machine (which GPU it takes when none is
  /// named: node_rank modulo the GPUs it sees).
  virtual int node_rank() const { return rank(); }
  /// Every worker's `mine`, in rank order, on every worker (a barrier as well).
  virtual std::vector<std::string> all_gather(const std::string& mine) = 0;
};

/// `count` workers that are threads of this process: local_peers(count)[i] is worker i's view.
/// The views share their state; they outlive the threads that use them.
std::vector<std::unique_ptr<Peers>> local_peers(int count);

/// `count` threads in each of `outer`'s processes as one set of workers (`mpirun` ranks each
/// with several GPUs): thread i of process p is worker p · count + i. The threads gather among
/// themselves; thread 0 alone exchanges with the other processes, so it must be the thread
/// that may call `outer` (the main thread, for MPI). The views share their state and hold
/// `outer` by reference.
std::vector<std::unique_ptr<Peers>> nested_peers(Peers& outer, int count);

}  // namespace revmerge
