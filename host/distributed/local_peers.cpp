// Workers that are threads of one process (one per GPU of a multi-GPU merge, and the tests'
// stand-in for MPI ranks): all_gather is a barrier over a shared table.
#include <condition_variable>
#include <mutex>

#include "revmerge/peers.hpp"

namespace revmerge {
namespace {

struct Table {
  explicit Table(int n) : slots(static_cast<std::size_t>(n)) {}
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::string> slots, result;
  int arrived = 0;
  unsigned long round = 0;
};

class LocalPeers final : public Peers {
 public:
  LocalPeers(std::shared_ptr<Table> table, int rank) : table_(std::move(table)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(table_->slots.size()); }

  std::vector<std::string> all_gather(const std::string& mine) override {
    auto& t = *table_;
    std::unique_lock lock(t.mutex);
    t.slots[static_cast<std::size_t>(rank_)] = mine;
    const unsigned long round = t.round;
    if (++t.arrived == size()) {
      // The last to arrive publishes; the others copy it before any of them can start the next
      // round (which needs every worker, each of them included).
      t.result = t.slots;
      t.arrived = 0;
      ++t.round;
      t.changed.notify_all();
    } else {
      t.changed.wait(lock, [&] { return t.round != round; });
    }
    return t.result;
  }

 private:
  std::shared_ptr<Table> table_;
  int rank_;
};

}  // namespace

std::vector<std::unique_ptr<Peers>> local_peers(int count) {
  auto table = std::make_shared<Table>(count);
  std::vector<std::unique_ptr<Peers>> peers;
  for (int r = 0; r < count; ++r) peers.push_back(std::make_unique<LocalPeers>(table, r));
  return peers;
}

}  // namespace revmerge
