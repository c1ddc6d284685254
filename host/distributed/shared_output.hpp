#pragma once
// The agreed steps by which several workers (revmerge/peers.hpp) write one output: worker 0
// stages the folder and lays out the files, the others join those files, each writes its own
// tensors and syncs them, worker 0 commits once all have. Every call is collective (all workers
// make it, in the same order) and agreed: a failure on any worker fails all, nothing is
// committed. What is written (one bundle file, a sharded model) is the caller's.
#include <functional>
#include <string>
#include <vector>

#include "distributed/agreement.hpp"
#include "revmerge/peers.hpp"

namespace revmerge {

class SharedOutput {
 public:
  /// Null peers, or one worker: every step runs here alone.
  explicit SharedOutput(Peers* peers) : peers_(several(peers)) {}

  /// The workers when there are several, else null.
  Peers* peers() const { return peers_; }
  /// This worker creates and commits the output (worker 0, or the only one).
  bool first() const { return !peers_ || peers_->rank() == 0; }

  /// `prepare` on every worker (what must hold everywhere before an output exists), then
  /// `create` on worker 0 (returns the files being written, as paths), then `join` on the others
  /// with those paths; agreed after the first two and after the third.
  void open(const std::function<void()>& prepare, const std::function<std::vector<std::string>()>& create,
            const std::function<void(const std::vector<std::string>&)>& join);
  /// `write` (this worker's share), then `sync` on the others (their bytes synced; the files stay
  /// worker 0's to rename); agreed. Returns, on worker 0, what the others' `written` said (the
  /// tensors they wrote).
  std::vector<std::string> write_share(const std::function<void()>& write, const std::function<void()>& sync,
                                       const std::function<std::vector<std::string>()>& written);
  /// Every worker's `mine`, in rank order (this worker's alone without peers).
  std::vector<std::string> gather(const std::string& mine);
  /// `commit` on worker 0 (which checks for an interrupt first, naming its command); agreed.
  void commit(const std::function<void()>& commit);

 private:
  Peers* peers_;
};

}  // namespace revmerge
