// Workers that are threads of one process (one per GPU of a multi-GPU merge, and the tests'
// stand-in for MPI ranks): all_gather is a barrier over a shared table. Threads of several
// processes (nested): the threads gather, thread 0 exchanges their parts with the processes.
#include <condition_variable>
#include <mutex>

#include "distributed/bytes.hpp"
#include "revmerge/error.hpp"
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

// Strings as one, and back.
std::string pack(const std::vector<std::string>& parts) {
  ByteWriter w;
  for (const auto& p : parts) w.put_string(p);
  return std::move(w.bytes());
}

std::vector<std::string> unpack(const std::string& bytes) {
  ByteReader r(bytes, "the workers' exchange");
  std::vector<std::string> parts;
  while (!r.done()) parts.push_back(r.get_string());
  return parts;
}

class NestedPeers final : public Peers {
 public:
  NestedPeers(Peers& outer, std::unique_ptr<Peers> local) : outer_(outer), local_(std::move(local)) {}
  int rank() const override { return outer_.rank() * local_->size() + local_->rank(); }
  int size() const override { return outer_.size() * local_->size(); }
  int node_rank() const override { return outer_.node_rank() * local_->size() + local_->rank(); }

  std::vector<std::string> all_gather(const std::string& mine) override {
    const auto here = local_->all_gather(mine);
    std::string everyone;
    if (local_->rank() == 0) {
      std::vector<std::string> all;
      for (const auto& process : outer_.all_gather(pack(here)))
        for (auto& part : unpack(process)) all.push_back(std::move(part));
      everyone = pack(all);
    }
    return unpack(local_->all_gather(everyone)[0]);
  }

 private:
  Peers& outer_;
  std::unique_ptr<Peers> local_;
};

}  // namespace

std::vector<std::unique_ptr<Peers>> nested_peers(Peers& outer, int count) {
  // Worker numbers need the same count of threads in every process (`--gpus all` may differ
  // between machines); every process sees the same counts, so all refuse together.
  const auto counts = outer.all_gather(std::to_string(count));
  for (std::size_t p = 0; p < counts.size(); ++p)
    if (counts[p] != counts[0])
      throw usage_error("process " + std::to_string(p) + " runs " + counts[p] + " workers, process 0 " + counts[0] +
                        ": give every process as many GPUs (--gpus)");
  std::vector<std::unique_ptr<Peers>> peers;
  for (auto& local : local_peers(count)) peers.push_back(std::make_unique<NestedPeers>(outer, std::move(local)));
  return peers;
}

std::vector<std::unique_ptr<Peers>> local_peers(int count) {
  auto table = std::make_shared<Table>(count);
  std::vector<std::unique_ptr<Peers>> peers;
  for (int r = 0; r < count; ++r) peers.push_back(std::make_unique<LocalPeers>(table, r));
  return peers;
}

}  // namespace revmerge
