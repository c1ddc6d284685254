// One merge split across workers (revmerge/peers.hpp): RMM and the budgeted store by 2 and 3
// workers (threads standing in for MPI ranks, each with its own backend) write the single
// worker's bytes, on one device or several, or fail together and leave nothing.
#include <gtest/gtest.h>

#include <atomic>
#include <set>

#include "backend/deferred_backend.hpp"
#include "methods/on_backend.hpp"
#include "methods/adapter_writer.hpp"
#include "revmerge/bundle.hpp"
#include "revmerge/devices.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peers.hpp"
#include "revmerge/rmm.hpp"
#include "revmerge/store.hpp"
#include "distributed_fixtures.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using namespace distributed_fixtures;

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
