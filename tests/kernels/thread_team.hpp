#pragma once
// A team of host threads, for testing the team forms of the per-position routines on a machine
// without a GPU: the code a GPU's warp or block runs (lanes splitting the work, syncs between
// phases, votes), with each lane a thread and each sync a barrier. Run with any lane count, it
// must give the bits of the CPU's one-lane form.
#include <atomic>
#include <barrier>
#include <functional>
#include <thread>
#include <vector>

namespace revmerge::test {

class ThreadTeam {
 public:
  static constexpr bool serial = false;
  int lane() const { return lane_; }
  int lanes() const { return shared_->lanes; }
  void sync() const { shared_->barrier.arrive_and_wait(); }
  /// True when pred is true on any lane; every lane gets the answer (a sync too). Votes
  /// alternate between two flags, so one vote's reset never races the next vote's set.
  bool any(bool pred) const {
    // The next vote's flag was last read before this vote began: clear it now, before anyone
    // can reach that vote.
    if (lane_ == 0) shared_->votes[(vote_ + 1) & 1].store(false);
    auto& flag = shared_->votes[vote_ & 1];
    if (pred) flag.store(true);
    sync();
    const bool result = flag.load();
    sync();
    ++vote_;
    return result;
  }

  /// Runs body(team) on `lanes` threads, one lane each, and waits for them.
  static void run(int lanes, const std::function<void(const ThreadTeam&)>& body) {
    Shared shared(lanes);
    std::vector<std::thread> threads;
    for (int l = 0; l < lanes; ++l)
      threads.emplace_back([&, l] {
        const ThreadTeam team(l, &shared);
        body(team);
      });
    for (auto& t : threads) t.join();
  }

 private:
  struct Shared {
    explicit Shared(int n) : lanes(n), barrier(n) {}
    int lanes;
    std::barrier<> barrier;
    std::atomic<bool> votes[2] = {false, false};
  };
  ThreadTeam(int lane, Shared* shared) : lane_(lane), shared_(shared) {}
  int lane_;
  Shared* shared_;
  mutable unsigned vote_ = 0;
};

}  // namespace revmerge::test
