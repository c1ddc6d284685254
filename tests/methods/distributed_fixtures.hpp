#pragma once
// What the merges split across workers share in their tests (distributed_*_test.cpp): a small
// adapter set, RMM options over it, workers as threads each with its own peers (and backend),
// and two output folders compared byte for byte.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "methods/adapter_writer.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peers.hpp"
#include "revmerge/rmm.hpp"
#include "test_util.hpp"

namespace revmerge::distributed_fixtures {

// Six layers of two modules of two shapes, 4 tasks of rank 4.
inline std::vector<test::ModuleSpec> six_layers() {
  std::vector<test::ModuleSpec> modules;
  for (int l = 0; l < 6; ++l) {
    modules.push_back({"model.layers." + std::to_string(l) + ".self_attn.q_proj", 4, 24, 16});
    modules.push_back({"model.layers." + std::to_string(l) + ".self_attn.v_proj", 4, 24, 40});
  }
  return modules;
}

inline RmmMergeOptions options(const test::TempDir& tmp, int n, const std::filesystem::path& out) {
  RmmMergeOptions o;
  for (int t = 0; t < n; ++t) o.tasks.push_back({"task" + std::to_string(t), tmp / ("task" + std::to_string(t))});
  o.basis = 2;
  o.out = out;
  o.device = Device::cpu;
  o.threads = 1;
  o.dtype = DType::BF16;
  return o;
}

// run(peers) on `workers` threads, each with its own view of the workers; what each one threw.
inline std::vector<std::string> run_workers(int workers, const std::function<void(Peers*)>& run) {
  auto peers = local_peers(workers);
  std::vector<std::string> failed(static_cast<std::size_t>(workers));
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      try {
        run(peers[w].get());
      } catch (const std::exception& e) {
        failed[w] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  return failed;
}

// merge_rmm by `workers` threads, each with its own peers and backend.
inline std::vector<std::string> merge_by(int workers, const RmmMergeOptions& o) {
  return run_workers(workers, [&](Peers* peers) {
    auto mine = o;
    mine.peers = peers;
    merge_rmm(mine);
  });
}

// Every file of two output folders, byte for byte (the recipe, which names the output, aside).
inline void expect_same_folders(const std::filesystem::path& a, const std::filesystem::path& b, const std::string& what) {
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(a)) names.insert(e.path().filename().string());
  for (const auto& e : std::filesystem::directory_iterator(b)) names.insert(e.path().filename().string());
  for (const auto& n : names) {
    if (n == kRecipeName) continue;
    ASSERT_TRUE(std::filesystem::exists(a / n) && std::filesystem::exists(b / n)) << what << ": " << n;
    EXPECT_EQ(test::read_bytes(a / n), test::read_bytes(b / n)) << what << ": " << n;
  }
}

}  // namespace revmerge::distributed_fixtures
