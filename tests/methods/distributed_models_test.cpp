// Full-model merges, classic merges of adapters and compress split across workers (threads
// standing in for MPI ranks): each writes one process's bytes.
#include <gtest/gtest.h>

#include <set>

#include "methods/model_output.hpp"
#include "revmerge/classic.hpp"
#include "revmerge/compress.hpp"
#include "revmerge/hf_model.hpp"
#include "revmerge/devices.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peers.hpp"
#include "distributed_fixtures.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using namespace distributed_fixtures;

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

}  // namespace
}  // namespace revmerge
