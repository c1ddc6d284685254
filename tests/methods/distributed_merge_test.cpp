// One merge split across workers (revmerge/peers.hpp): the shares of the modules, the workers'
// collectives, and merges by 2 and 3 workers (threads standing in for MPI ranks, each with its
// own backend) that write the single worker's bytes, or fail together and leave nothing.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <set>
#include <thread>

#include "backend/deferred_backend.hpp"
#include "distributed/agreement.hpp"
#include "methods/model_output.hpp"
#include "methods/on_backend.hpp"
#include "revmerge/classic.hpp"
#include "revmerge/compress.hpp"
#include "revmerge/hf_model.hpp"
#include "methods/adapter_writer.hpp"
#include "revmerge/bundle.hpp"
#include "revmerge/devices.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peers.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/store.hpp"
#include "test_util.hpp"

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

// Six layers of two modules of two shapes, 4 tasks of rank 4.
std::vector<test::ModuleSpec> six_layers() {
  std::vector<test::ModuleSpec> modules;
  for (int l = 0; l < 6; ++l) {
    modules.push_back({"model.layers." + std::to_string(l) + ".self_attn.q_proj", 4, 24, 16});
    modules.push_back({"model.layers." + std::to_string(l) + ".self_attn.v_proj", 4, 24, 40});
  }
  return modules;
}

RmmMergeOptions options(const test::TempDir& tmp, int n, const std::filesystem::path& out) {
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
std::vector<std::string> run_workers(int workers, const std::function<void(Peers*)>& run) {
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
std::vector<std::string> merge_by(int workers, const RmmMergeOptions& o) {
  return run_workers(workers, [&](Peers* peers) {
    auto mine = o;
    mine.peers = peers;
    merge_rmm(mine);
  });
}

TEST(DistributedMerge, TwoAndThreeWorkersWriteTheSingleWorkersBytes) {
  test::TempDir tmp;
  for (int t = 0; t < 4; ++t) test::write_adapter(tmp / ("task" + std::to_string(t)), 4, 8, six_layers(), "", 40 + t);
  const auto one = options(tmp, 4, tmp / "one");
  merge_rmm(one);
  for (const int workers : {2, 3, 5}) {
    const auto out = tmp / ("by" + std::to_string(workers));
    const auto failed = merge_by(workers, options(tmp, 4, out));
    for (int w = 0; w < workers; ++w) EXPECT_EQ(failed[w], "") << workers << " workers, worker " << w;
    for (const char* file : {kBundleTensorsName, kBundleManifestName, kRecipeName})
      EXPECT_EQ(test::read_bytes(out / file), test::read_bytes(one.out / file)) << workers << " workers: " << file;
  }
}

// The budgeted store (pass 1 measured by shares and exchanged, one allocation everywhere,
// pass 2 by shares): 2 and 3 workers give one worker's bytes, RMM, truncations and shared bases
// among the choices.
TEST(DistributedMerge, TheBudgetedStoreByTwoAndThreeWorkersWritesOneWorkersBytes) {
  test::TempDir tmp;
  for (int t = 0; t < 4; ++t) test::write_adapter(tmp / ("task" + std::to_string(t)), 4, 8, six_layers(), "", 70 + t);
  // Every representation stored somewhere: auto (truncations here), RMM alone, the shared bases.
  const std::vector<std::vector<Representation>> weighed{
      {}, {Representation::rmm}, {Representation::shared_rows, Representation::shared}};
  std::set<Representation> stored;
  for (std::size_t c = 0; c < weighed.size(); ++c) {
    const auto store = [&](const std::filesystem::path& out) {
      StoreMergeOptions o;
      for (int t = 0; t < 4; ++t) o.tasks.push_back({"task" + std::to_string(t), tmp / ("task" + std::to_string(t))});
      o.method = StoreMethod::automatic;
      o.storage.fraction = 0.5;
      o.representations = weighed[c];
      o.out = out;
      o.device = Device::cpu;
      o.threads = 1;
      return o;
    };
    const auto one = tmp / ("one" + std::to_string(c));
    for (const auto& m : merge_store(store(one)).modules) stored.insert(m.representation);
    for (const int workers : {2, 3}) {
      const auto out = tmp / ("by" + std::to_string(workers) + "-" + std::to_string(c));
      const auto failed = run_workers(workers, [&](Peers* peers) {
        auto o = store(out);
        o.peers = peers;
        merge_store(o);
      });
      for (int w = 0; w < workers; ++w) EXPECT_EQ(failed[w], "") << workers << " workers, worker " << w;
      for (const char* file : {kBundleTensorsName, kBundleManifestName, kRecipeName})
        EXPECT_EQ(test::read_bytes(out / file), test::read_bytes(one / file)) << workers << " workers: " << file;
    }
  }
  EXPECT_GE(stored.size(), 3u) << "rank, rmm, and a shared basis";
}

// A bundle sharded by workers (--shard-per-rank) against the one file: the same manifest, every
// tensor's bytes, a module's tensors all in one shard, and each task reverted to the same adapter.
void expect_shards_hold_the_single_bundle(const std::filesystem::path& sharded, const std::filesystem::path& one,
                                          std::size_t shards, const std::string& what) {
  EXPECT_FALSE(std::filesystem::exists(sharded / kBundleTensorsName)) << what;
  EXPECT_EQ(test::read_bytes(sharded / kBundleManifestName), test::read_bytes(one / kBundleManifestName)) << what;
  const Bundle a(sharded), b(one);
  ASSERT_TRUE(a.sharded()) << what;
  EXPECT_EQ(a.tensors().files().size(), shards) << what;
  for (std::size_t k = 0; k < shards; ++k)
    EXPECT_TRUE(std::filesystem::exists(sharded / bundle_shard_name(static_cast<int>(k) + 1, static_cast<int>(shards))))
        << what << ": shard " << k + 1;
  ASSERT_EQ(a.tensors().tensors().size(), b.tensors().tensors().size()) << what;
  for (const auto& [file, info] : b.tensors().tensors()) {
    const auto* t = a.tensors().find(info->name);
    ASSERT_NE(t, nullptr) << what << ": " << info->name;
    const auto x = file->bytes(*info), y = t->file->bytes(*t->info);
    EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << what << ": " << info->name;
  }
  for (const auto& mod : a.manifest().modules) {
    std::set<const SafetensorsFile*> holding;
    for (const auto& [file, info] : a.tensors().tensors())
      if (info->name.starts_with(mod.path + ".lora_")) holding.insert(file);
    EXPECT_EQ(holding.size(), 1u) << what << ": " << mod.path;
  }
  test::TempDir tmp;
  RevertOptions ro;
  ro.device = Device::cpu;
  ro.threads = 1;
  for (const auto& task : b.manifest().tasks) {
    revert_task(a, task.name, tmp / ("a-" + task.name), ro);
    revert_task(b, task.name, tmp / ("b-" + task.name), ro);
    EXPECT_EQ(test::read_bytes(tmp / ("a-" + task.name) / kAdapterWeightsName),
              test::read_bytes(tmp / ("b-" + task.name) / kAdapterWeightsName))
        << what << ": " << task.name;
  }
}

// --shard-per-rank: RMM by 3 workers and by more workers than modules (the ones without modules
// write no shard), the store by 2; one worker writes the one file.
TEST(DistributedMerge, ShardPerRankGivesEachWorkerAShardHoldingTheSingleBundlesTensors) {
  test::TempDir tmp;
  for (int t = 0; t < 4; ++t) test::write_adapter(tmp / ("task" + std::to_string(t)), 4, 8, six_layers(), "", 40 + t);
  const auto one = options(tmp, 4, tmp / "one");
  merge_rmm(one);
  for (const auto& [workers, shards] : {std::pair{3, 3u}, std::pair{14, 12u}}) {
    auto o = options(tmp, 4, tmp / ("shards" + std::to_string(workers)));
    o.shard_per_rank = true;
    const auto failed = merge_by(workers, o);
    for (int w = 0; w < workers; ++w) EXPECT_EQ(failed[w], "") << workers << " workers, worker " << w;
    expect_shards_hold_the_single_bundle(o.out, one.out, shards, std::to_string(workers) + " workers");
  }
  auto alone = options(tmp, 4, tmp / "alone");
  alone.shard_per_rank = true;
  merge_rmm(alone);
  EXPECT_EQ(test::read_bytes(alone.out / kBundleTensorsName), test::read_bytes(one.out / kBundleTensorsName));
  EXPECT_FALSE(std::filesystem::exists(alone.out / kBundleIndexName));

  const auto store = [&](const std::filesystem::path& out) {
    StoreMergeOptions o;
    for (int t = 0; t < 4; ++t) o.tasks.push_back({"task" + std::to_string(t), tmp / ("task" + std::to_string(t))});
    o.method = StoreMethod::automatic;
    o.storage.fraction = 0.5;
    o.out = out;
    o.device = Device::cpu;
    o.threads = 2;  // the store's CPU workers: the one file all the same
    o.shard_per_rank = true;
    return o;
  };
  merge_store(store(tmp / "store-one"));
  EXPECT_TRUE(std::filesystem::exists(tmp / "store-one" / kBundleTensorsName));
  const auto failed = run_workers(2, [&](Peers* peers) {
    auto o = store(tmp / "store-two");
    o.peers = peers;
    merge_store(o);
  });
  for (int w = 0; w < 2; ++w) EXPECT_EQ(failed[w], "") << "worker " << w;
  expect_shards_hold_the_single_bundle(tmp / "store-two", tmp / "store-one", 2, "store");
}

// Every file of two output folders, byte for byte (the recipe, which names the output, aside).
void expect_same_folders(const std::filesystem::path& a, const std::filesystem::path& b, const std::string& what) {
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(a)) names.insert(e.path().filename().string());
  for (const auto& e : std::filesystem::directory_iterator(b)) names.insert(e.path().filename().string());
  for (const auto& n : names) {
    if (n == kRecipeName) continue;
    ASSERT_TRUE(std::filesystem::exists(a / n) && std::filesystem::exists(b / n)) << what << ": " << n;
    EXPECT_EQ(test::read_bytes(a / n), test::read_bytes(b / n)) << what << ": " << n;
  }
}

// A full model written by workers into shards of a few kilobytes (several shards, the index):
// every worker's tensors land in the shards worker 0 laid out, the same bytes as one writer.
TEST(DistributedMerge, AModelWrittenByWorkersIntoSeveralShardsIsOneWritersBytes) {
  test::TempDir tmp;
  const HfModel base(std::filesystem::path(REVMERGE_FIXTURES) / "golden/mergekit/base");
  ModelOutputOptions mo;
  mo.max_shard_bytes = 6000;
  mo.dtype = DType::F32;
  // Every float tensor scaled by 2 (a produced tensor), the rest copied.
  const TensorProducer produce = [&](const std::string& name, std::vector<float>& v) {
    base.checkpoint().at(name).file->read_part(*base.checkpoint().at(name).info, 0, v, 1);
    for (auto& x : v) x *= 2;
    return true;
  };
  const auto produced = write_full_model(base, tmp / "one", produce, mo);
  ASSERT_TRUE(std::filesystem::exists(tmp / "one" / kShardIndexName)) << "one shard only: make them smaller";
  for (const int workers : {2, 3}) {
    const auto out = tmp / ("by" + std::to_string(workers));
    std::vector<std::int64_t> counts(static_cast<std::size_t>(workers));
    const auto failed = run_workers(workers, [&](Peers* peers) {
      auto w = mo;
      w.peers = peers;
      counts[static_cast<std::size_t>(peers->rank())] = write_full_model(base, out, produce, w);
    });
    for (int w = 0; w < workers; ++w) {
      EXPECT_EQ(failed[w], "") << workers << " workers, worker " << w;
      EXPECT_EQ(counts[w], produced) << "every worker returns the count over all";
    }
    expect_same_folders(tmp / "one", out, std::to_string(workers) + " workers");
  }
}

// The classic methods on full models (mergekit's fixtures): TIES by 3 workers, the one
// process's model.
TEST(DistributedMerge, TiesOfFullModelsByThreeWorkersIsOneProcesssModel) {
  test::TempDir tmp;
  const auto mk = std::filesystem::path(REVMERGE_FIXTURES) / "golden/mergekit";
  const auto ties = [&](const std::filesystem::path& out) {
    ClassicMergeOptions o;
    o.method = ClassicMethod::ties;
    o.base = mk / "base";
    o.tasks = {{"ft0", mk / "ft0"}, {"ft1", mk / "ft1"}, {"ft2", mk / "ft2"}};
    o.densities = {0.5};
    o.out = out;
    o.threads = 1;
    return o;
  };
  merge_classic(ties(tmp / "one"));
  const auto failed = run_workers(3, [&](Peers* peers) {
    auto o = ties(tmp / "three");
    o.peers = peers;
    merge_classic(o);
  });
  for (int w = 0; w < 3; ++w) EXPECT_EQ(failed[w], "") << "worker " << w;
  expect_same_folders(tmp / "one", tmp / "three", "ties");
  // --shard-per-rank: a shard (at least) per worker, none holding two workers' tensors; the
  // same tensors, byte for byte.
  std::vector<std::vector<std::string>> wrote(3);
  const auto sharded = run_workers(3, [&](Peers* peers) {
    auto o = ties(tmp / "shards");
    o.peers = peers;
    o.shard_per_rank = true;
    o.progress = [&](std::size_t, std::size_t, const std::string& name) {
      wrote[static_cast<std::size_t>(peers->rank())].push_back(name);
    };
    merge_classic(o);
  });
  for (int w = 0; w < 3; ++w) EXPECT_EQ(sharded[w], "") << "worker " << w;
  const Checkpoint one(tmp / "one"), shards(tmp / "shards");
  EXPECT_EQ(one.files().size(), 1u);
  EXPECT_EQ(shards.files().size(), 3u);
  ASSERT_EQ(shards.tensors().size(), one.tensors().size());
  for (const auto& [file, info] : one.tensors()) {
    const auto* t = shards.find(info->name);
    ASSERT_NE(t, nullptr) << info->name;
    const auto x = file->bytes(*info), y = t->file->bytes(*t->info);
    EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << info->name;
  }
  for (int w = 0; w < 3; ++w) {
    std::set<const SafetensorsFile*> files;
    for (const auto& name : wrote[w]) files.insert(shards.at(name).file);
    EXPECT_EQ(files.size(), 1u) << "worker " << w << " wrote into " << files.size() << " shards";
  }
}

// The classic methods on adapters: each worker merges its share of the modules, all exchange
// them, worker 0 writes the adapter — the one process's, for an adapter (TIES, DARE's masks,
// the SVD re-factorisation of a combined merge) and for --full-model (split by tensors).
TEST(DistributedMerge, ClassicMergesOfAdaptersByTwoAndThreeWorkersAreOneProcesssOutput) {
  test::TempDir tmp;
  const auto examples = std::filesystem::path(REVMERGE_SOURCE_DIR) / "examples/adapters";
  const auto merge = [&](ClassicMethod method, LoraMergeMode mode, bool full, const std::filesystem::path& out) {
    ClassicMergeOptions o;
    o.method = method;
    o.mode = mode;
    for (const char* t : {"qa", "chat", "code"}) o.tasks.push_back({t, examples / t});
    if (method != ClassicMethod::task_arithmetic && method != ClassicMethod::svd) o.densities = {0.5};
    if (full) o.full_model = true, o.base = std::filesystem::path(REVMERGE_SOURCE_DIR) / "examples/tiny-llama";
    o.out = out;
    o.threads = 1;
    return o;
  };
  struct Case {
    ClassicMethod method;
    LoraMergeMode mode;
    bool full;
  };
  for (const auto& [method, mode, full] : {Case{ClassicMethod::ties, LoraMergeMode::separate, false},
                                           Case{ClassicMethod::dare_linear, LoraMergeMode::combined, false},
                                           Case{ClassicMethod::svd, LoraMergeMode::combined, false},
                                           Case{ClassicMethod::task_arithmetic, LoraMergeMode::separate, true}}) {
    const auto what = to_string(method) + (full ? " --full-model" : "");
    const auto one = tmp / (what + "-one");
    merge_classic(merge(method, mode, full, one));
    for (const int workers : {2, 3}) {
      const auto out = tmp / (what + "-" + std::to_string(workers));
      const auto failed = run_workers(workers, [&](Peers* peers) {
        auto o = merge(method, mode, full, out);
        o.peers = peers;
        merge_classic(o);
      });
      for (int w = 0; w < workers; ++w) EXPECT_EQ(failed[w], "") << what << ", worker " << w;
      expect_same_folders(one, out, what + " by " + std::to_string(workers));
    }
  }
}

// compress by 3 workers: the one process's adapter and report (its totals summed alike), at
// one rank and with ranks chosen by energy (each module's known only after its SVD).
void expect_compress_by_three_is_one_process(double energy) {
  SCOPED_TRACE(energy);
  test::TempDir tmp;
  const auto mk = std::filesystem::path(REVMERGE_FIXTURES) / "golden/mergekit";
  const auto options = [&](const std::filesystem::path& out) {
    CompressOptions o;
    o.base = mk / "base";
    o.model = mk / "ft1";
    o.rank = energy > 0 ? 8 : 4;  // with --energy the most each module keeps
    o.energy = energy;
    o.out = out;
    o.device = Device::cpu;
    o.threads = 1;
    return o;
  };
  const auto one = compress_checkpoint(options(tmp / "one"));
  if (energy > 0) {
    std::set<std::int64_t> ranks;
    for (const auto& m : one.modules) ranks.insert(m.rank);
    EXPECT_GE(ranks.size(), 2u) << "the energy should choose ranks that differ between modules";
  }
  std::vector<CompressReport> reports(3);
  const auto failed = run_workers(3, [&](Peers* peers) {
    auto o = options(tmp / "three");
    o.peers = peers;
    reports[static_cast<std::size_t>(peers->rank())] = compress_checkpoint(o);
  });
  for (int w = 0; w < 3; ++w) {
    EXPECT_EQ(failed[w], "") << "worker " << w;
    EXPECT_EQ(reports[w].relative_error, one.relative_error) << "worker " << w;
    EXPECT_EQ(reports[w].storage, one.storage) << "worker " << w;
    ASSERT_EQ(reports[w].modules.size(), one.modules.size());
    for (std::size_t m = 0; m < one.modules.size(); ++m) {
      EXPECT_EQ(reports[w].modules[m].path, one.modules[m].path);
      EXPECT_EQ(reports[w].modules[m].relative_error, one.modules[m].relative_error);
    }
  }
  expect_same_folders(tmp / "one", tmp / "three", "compress");
}

TEST(DistributedMerge, CompressByThreeWorkersIsOneProcesssAdapterAndReport) {
  expect_compress_by_three_is_one_process(0);
  expect_compress_by_three_is_one_process(0.7);
}

// The test backend that behaves like a GPU.
std::unique_ptr<Backend> deferred() { return test::make_deferred_backend(); }

// Four tasks of six_layers() in `tmp`, and their bundle made on one such backend at tmp/one.
RmmMergeOptions one_device_bundle(const test::TempDir& tmp) {
  for (int t = 0; t < 4; ++t) test::write_adapter(tmp / ("task" + std::to_string(t)), 4, 8, six_layers(), "", 40 + t);
  auto one = options(tmp, 4, tmp / "one");
  one.device = Device::automatic;
  merge_rmm_on(one, deferred);
  return one;
}

// --gpus 0,0,0: three workers of one process, each with its own backend (here the test backend
// that behaves like a GPU), give the one backend's bytes; only worker 0 reports progress.
TEST(DistributedMerge, WorkersOnSeveralDevicesOfOneProcessWriteTheOneDevicesBytes) {
  test::TempDir tmp;
  const auto one = one_device_bundle(tmp);
  auto three = options(tmp, 4, tmp / "three");
  three.device = Device::automatic;
  three.gpus = {0, 0, 0};
  std::atomic<int> reports = 0;
  three.pipeline_progress = [&](const PipelineProgress& p) { reports += p.finished; };
  PipelineStats stats;
  three.stats = &stats;
  const auto manifest = merge_rmm_on(three, deferred);
  EXPECT_EQ(manifest.modules.size(), 12u);
  EXPECT_EQ(reports.load(), 1);
  EXPECT_LT(stats.modules, 12u);  // worker 0's share
  for (const char* file : {kBundleTensorsName, kBundleManifestName})
    EXPECT_EQ(test::read_bytes(three.out / file), test::read_bytes(one.out / file)) << file;
  three.device = Device::cpu;
  EXPECT_THROW(merge_rmm_on(three, deferred), usage_error);
}

// The store on several GPUs of this process (--method auto --gpus 0,0): the one GPU's bundle;
// without a GPU every worker fails with the device's reason and nothing is left. Refused on the
// CPU.
TEST(DistributedMerge, TheStoreOnTwoWorkersOfOneGpuIsTheOneGpusBundle) {
  test::TempDir tmp;
  for (int t = 0; t < 4; ++t) test::write_adapter(tmp / ("task" + std::to_string(t)), 4, 8, six_layers(), "", 40 + t);
  const auto store = [&](const std::filesystem::path& out) {
    StoreMergeOptions o;
    for (int t = 0; t < 4; ++t) o.tasks.push_back({"task" + std::to_string(t), tmp / ("task" + std::to_string(t))});
    o.method = StoreMethod::automatic;
    o.storage.fraction = 0.5;
    o.representations = {Representation::rmm};
    o.out = out;
    o.device = Device::cuda;
    o.threads = 1;
    return o;
  };
  auto two = store(tmp / "two");
  two.gpus = {0, 0};
  if (probe_devices().gpus.empty()) {
    EXPECT_THROW(merge_store(two), device_error);
    EXPECT_FALSE(std::filesystem::exists(two.out));
    GTEST_LOG_(INFO) << "no GPU: the two workers' bundle against one GPU's is tools/gpu-check.sh's";
  } else {
    merge_store(store(tmp / "one"));
    merge_store(two);
    for (const char* file : {kBundleTensorsName, kBundleManifestName})
      EXPECT_EQ(test::read_bytes(two.out / file), test::read_bytes(tmp / "one" / file)) << file;
  }
  auto cpu = two;
  cpu.device = Device::cpu;
  EXPECT_THROW(merge_store(cpu), usage_error);
}

// mpirun ranks each with several GPUs (--gpus 0,0 in each of 2 processes, threads standing in
// for the processes): 4 workers, the one backend's bytes; with --shard-per-rank, 4 shards.
TEST(DistributedMerge, RanksWithSeveralDevicesEachAreOneSetOfWorkers) {
  test::TempDir tmp;
  const auto one = one_device_bundle(tmp);
  for (const bool shards : {false, true}) {
    const auto out = tmp / (shards ? "shards" : "file");
    const auto failed = run_workers(2, [&](Peers* peers) {
      auto o = options(tmp, 4, out);
      o.device = Device::automatic;
      o.gpus = {0, 0};
      o.peers = peers;
      o.shard_per_rank = shards;
      merge_rmm_on(o, deferred);
    });
    for (int w = 0; w < 2; ++w) EXPECT_EQ(failed[w], "") << "process " << w;
    if (shards) {
      expect_shards_hold_the_single_bundle(out, one.out, 4, "2 processes × 2 devices");
    } else {
      for (const char* file : {kBundleTensorsName, kBundleManifestName})
        EXPECT_EQ(test::read_bytes(out / file), test::read_bytes(one.out / file)) << file;
    }
  }
}

TEST(DistributedMerge, ABadInputOfOneWorkersShareFailsEveryWorkerWithItsNameAndLeavesNothing) {
  test::TempDir tmp;
  const auto modules = six_layers();
  for (int t = 0; t < 4; ++t) {
    auto w = test::write_adapter(tmp / ("task" + std::to_string(t)), 4, 4, modules, "", 40 + t);
    if (t != 2) continue;
    // A NaN in the last module of task2, which the last worker merges.
    w.a[modules.back().path][5] = std::nanf("");
    std::filesystem::remove(w.dir / kAdapterWeightsName);
    test::write_adapter_factors(w.dir, 4, modules, w.a, w.b);
  }
  const auto out = tmp / "bundle";
  for (const bool shards : {false, true}) {
    auto o = options(tmp, 4, out);
    o.shard_per_rank = shards;
    const auto failed = merge_by(3, o);
    for (int w = 0; w < 3; ++w) {
      EXPECT_NE(failed[w].find("task2/adapter_model.safetensors"), std::string::npos)
          << "worker " << w << (shards ? ", shards" : "") << ": " << failed[w];
      EXPECT_EQ(failed[w], failed[2]);
    }
    EXPECT_FALSE(std::filesystem::exists(out)) << shards;
  }
  for (const auto& e : std::filesystem::directory_iterator(tmp.path()))
    EXPECT_EQ(e.path().filename().string().find(".bundle"), std::string::npos) << e.path() << " left behind";
}

}  // namespace
}  // namespace revmerge
