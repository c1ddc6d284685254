// The workers of a merge (revmerge/peers.hpp, distributed/): the shares of the modules, the
// collectives of threads and of threads in several processes, and a failure on one worker
// reaching every worker with its class and message.
#include <gtest/gtest.h>

#include <thread>

#include "distributed/agreement.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peers.hpp"

namespace revmerge {
namespace {

TEST(ShareOf, ContiguousInOrderCoveringEveryModuleOnceAndBalancedByBytes) {
  const std::vector<std::uint64_t> bytes{10, 10, 40, 10, 10, 10, 5, 5, 30, 70, 1, 1};
  std::uint64_t total = 0, largest = 0;
  for (const auto b : bytes) total += b, largest = std::max(largest, b);
  for (int size = 1; size <= 5; ++size) {
    std::size_t next = 0;
    for (int rank = 0; rank < size; ++rank) {
      const auto [first, last] = share_of(bytes, rank, size);
      ASSERT_LE(first, last);
      if (first == last) continue;
      EXPECT_EQ(first, next) << size << " workers, worker " << rank;
      next = last;
      std::uint64_t mine = 0;
      for (auto i = first; i < last; ++i) mine += bytes[i];
      // Within one module of the even share.
      EXPECT_LE(double(mine), double(total) / size + double(largest)) << size << " workers, worker " << rank;
    }
    EXPECT_EQ(next, bytes.size()) << size << " workers";
  }
  // More workers than modules: some take none, every module is still taken once.
  std::size_t taken = 0;
  for (int rank = 0; rank < 7; ++rank) {
    const auto [first, last] = share_of({3, 3, 3}, rank, 7);
    taken += last - first;
  }
  EXPECT_EQ(taken, 3u);
}

TEST(LocalPeers, EveryRoundGivesEveryWorkerEveryonesValueInRankOrder) {
  auto peers = local_peers(3);
  std::vector<std::vector<std::string>> got(3);
  std::vector<std::thread> threads;
  for (int w = 0; w < 3; ++w)
    threads.emplace_back([&, w] {
      for (int round = 0; round < 50; ++round) {
        const auto all = peers[w]->all_gather(std::to_string(round) + ":" + std::to_string(w));
        got[w].push_back(all[0] + "," + all[1] + "," + all[2]);
      }
    });
  for (auto& t : threads) t.join();
  for (int w = 0; w < 3; ++w)
    for (int round = 0; round < 50; ++round) {
      const auto r = std::to_string(round);
      EXPECT_EQ(got[w][round], r + ":0," + r + ":1," + r + ":2");
    }
}

// Threads of several processes as one set of workers (mpirun ranks with --gpus): processes
// stand in as threads here, each running 2 workers; every round gives every worker all 6 values
// in worker order (process-major). Processes that run different counts are refused together.
TEST(NestedPeers, ThreadsOfSeveralProcessesAreOneSetOfWorkersInProcessOrder) {
  auto processes = local_peers(3);
  std::vector<std::vector<std::string>> got(6);
  std::vector<int> sizes(6), ranks(6, -1);
  std::vector<std::thread> threads;
  for (int p = 0; p < 3; ++p)
    threads.emplace_back([&, p] {
      on_local_workers<int>(2, [&](Peers& w) {
        ranks[w.rank()] = w.rank(), sizes[w.rank()] = w.size();
        for (int round = 0; round < 20; ++round) {
          std::string line;
          for (const auto& v : w.all_gather(std::to_string(round) + ":" + std::to_string(p) + "." + std::to_string(w.rank())))
            line += v + ",";
          got[w.rank()].push_back(line);
        }
        return 0;
      }, processes[p].get());
    });
  for (auto& t : threads) t.join();
  for (int w = 0; w < 6; ++w) {
    EXPECT_EQ(ranks[w], w);
    EXPECT_EQ(sizes[w], 6);
    ASSERT_EQ(got[w].size(), 20u);
    for (int round = 0; round < 20; ++round) {
      std::string want;
      for (int v = 0; v < 6; ++v) want += std::to_string(round) + ":" + std::to_string(v / 2) + "." + std::to_string(v) + ",";
      EXPECT_EQ(got[w][round], want) << "worker " << w;
    }
  }
  std::vector<std::string> refused(2);
  threads.clear();
  auto two = local_peers(2);
  for (int p = 0; p < 2; ++p)
    threads.emplace_back([&, p] {
      try {
        on_local_workers<int>(p + 1, [](Peers&) { return 0; }, two[p].get());
      } catch (const usage_error& e) {
        refused[p] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int p = 0; p < 2; ++p)
    EXPECT_NE(refused[p].find("process 1 runs 2 workers, process 0 1"), std::string::npos) << refused[p];
}

TEST(AgreeOn, EveryWorkerThrowsTheFirstFailingWorkersErrorWithItsClass) {
  auto peers = local_peers(3);
  std::vector<std::string> what(3);
  std::vector<int> kind(3, 0);
  std::vector<std::thread> threads;
  for (int w = 0; w < 3; ++w)
    threads.emplace_back([&, w] {
      try {
        agree_on(peers[w].get(), [&] {
          if (w == 1) throw io_error("task-1/adapter_model.safetensors: truncated");
          if (w == 2) throw shape_error("a later failure");
        });
      } catch (const io_error& e) {
        kind[w] = 1, what[w] = e.what();
      } catch (const std::exception& e) {
        kind[w] = 2, what[w] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int w = 0; w < 3; ++w) {
    EXPECT_EQ(kind[w], 1) << "worker " << w << ": " << what[w];
    EXPECT_EQ(what[w], "task-1/adapter_model.safetensors: truncated");
  }
}

}  // namespace
}  // namespace revmerge
