// ResidentBundle: every representation rebuilt as revert rebuilds it; on a device, calls
// queued back to back with the CPU's bits.
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "methods/store/shared_rows.hpp"
#include "kernels/float_bits.hpp"
#include "backend/backend_cases.hpp"
#include "methods/materialize_parts.hpp"
#include "methods/resident_on_backend.hpp"
#include "revmerge/error.hpp"
#include "revmerge/resident.hpp"
#include "revmerge/store.hpp"
#include "store_fixtures.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using namespace store_fixtures;

// A resident bundle rebuilds every task of every representation with revert's bits: rmm
// (version 1 and a P per side), rank (also where a task keeps nothing of a module), shared rows,
// shared bases and tasks added later; in bf16 and f16 as the one rounding of those; any subset
// of modules in any order; bad calls refused.
TEST(ResidentBundle, RebuildsEveryRepresentationAsRevertDoes) {
  test::TempDir tmp;
  const auto family = write_family(tmp / "family");
  std::vector<std::filesystem::path> bundles;
  RmmMergeOptions r;
  r.tasks = family, r.basis = 2, r.out = tmp / "v1", r.device = Device::cpu;
  merge_rmm(r);
  bundles.push_back(r.out);
  auto o = store_options(family, StoreMethod::automatic, tmp / "auto");
  o.storage.fraction = 0.5;
  o.dtype = DType::BF16;  // the stored type the tiles read most
  merge_store(o);
  bundles.push_back(o.out);
  r.dtype = DType::F16, r.out = tmp / "v1-f16";
  merge_rmm(r);
  bundles.push_back(r.out);
  o = store_options(write_shared_a_family(tmp / "rows"), StoreMethod::automatic, tmp / "shared_rows");
  o.storage.fraction = 0.6, o.representations = {Representation::shared_rows};
  merge_store(o);
  bundles.push_back(o.out);
  o = store_options(write_shared_columns_family(tmp / "columns"), StoreMethod::automatic, tmp / "shared");
  o.storage.fraction = 0.6, o.representations = {Representation::shared};
  merge_store(o);
  bundles.push_back(o.out);
  o = store_options({family.begin(), family.begin() + 3}, StoreMethod::automatic, tmp / "three");
  o.storage.fraction = 0.5;
  merge_store(o);
  AddTasksOptions add;
  add.bundle = o.out, add.tasks = {family[3]}, add.out = tmp / "added";
  add_tasks(add);
  bundles.push_back(add.out);
  // A budget so small that some tasks keep nothing of some modules: those parts read no stored
  // tensor, beside parts that read bf16 ones in the same call.
  o = store_options(family, StoreMethod::rank, tmp / "rank-zero");
  o.storage.fraction = 0.05, o.dtype = DType::BF16;
  merge_store(o);
  bundles.push_back(o.out);
  {
    const Bundle zero(o.out);
    bool none_kept = false, some_kept = false;
    for (const auto& mod : zero.manifest().modules)
      for (const auto k : mod.kept_ranks) (k == 0 ? none_kept : some_kept) = true;
    ASSERT_TRUE(none_kept && some_kept) << "the rank-zero bundle keeps nothing of no module, or all of none";
  }
  std::set<Representation> seen;
  for (const auto& dir : bundles) {
    const Bundle bundle(dir);
    const auto& man = bundle.manifest();
    ResidentBundle rb(dir, Device::cpu);
    EXPECT_TRUE(rb.on_host());
    EXPECT_GE(rb.memory_bytes() + 8192, std::filesystem::file_size(dir / kBundleTensorsName));
    const std::size_t nm = man.modules.size();
    for (i64 t = 0; t < static_cast<i64>(man.tasks.size()); ++t) {
      std::vector<std::vector<float>> a(nm), b(nm);
      std::vector<std::vector<std::uint16_t>> a16(nm), b16(nm), ah(nm), bh(nm);
      std::vector<void*> pa, pb, pa16, pb16, pah, pbh;
      for (std::size_t m = 0; m < nm; ++m) {
        const auto& mod = man.modules[m];
        seen.insert(mod.representation);
        a[m].resize(mod.rank * mod.in), b[m].resize(mod.out * mod.rank);
        a16[m].resize(a[m].size()), b16[m].resize(b[m].size()), ah[m].resize(a[m].size()), bh[m].resize(b[m].size());
        pa.push_back(a[m].data()), pb.push_back(b[m].data());
        pa16.push_back(a16[m].data()), pb16.push_back(b16[m].data());
        pah.push_back(ah[m].data()), pbh.push_back(bh[m].data());
      }
      rb.materialize(t, {}, DType::F32, pa, pb);
      rb.materialize(t, {}, DType::BF16, pa16, pb16);
      rb.materialize(t, {}, DType::F16, pah, pbh);
      for (std::size_t m = 0; m < nm; ++m) {
        const auto want = revert_module(bundle, m, t, Device::cpu);
        ASSERT_EQ(a[m], want.a) << dir << " module " << m << " task " << t;
        ASSERT_EQ(b[m], want.b) << dir << " module " << m << " task " << t;
        // The CPU's tiles against the element routine the GPU runs, element by element.
        std::vector<float> ea(a[m].size()), eb(b[m].size());
        const auto lookup = [&](const std::string& name) {
          const auto& [file, info] = bundle.tensors().at(name);
          return StoredTensor{file->bytes(*info).data(), kernel_type(info->dtype, name)};
        };
        for (const auto& part : materialize_parts(man.modules[m], man.represented_tasks(), t, lookup, ea.data(),
                                                  eb.data(), kernels::ElemType::f32))
          for (i64 i = 0; i < part.rows; ++i)
            for (i64 j = 0; j < part.cols; ++j)
              kernels::store_rounded(part.out, i * part.cols + j, part.out_type, kernels::materialize_element(part, i, j));
        ASSERT_EQ(a[m], ea) << dir << " module " << m << " task " << t;
        ASSERT_EQ(b[m], eb) << dir << " module " << m << " task " << t;
        for (std::size_t i = 0; i < a[m].size(); ++i) {
          ASSERT_EQ(a16[m][i], kernels::f32_to_bf16_bits(a[m][i]));
          ASSERT_EQ(ah[m][i], kernels::f32_to_f16_bits(a[m][i]));
        }
        for (std::size_t i = 0; i < b[m].size(); ++i) {
          ASSERT_EQ(b16[m][i], kernels::f32_to_bf16_bits(b[m][i]));
          ASSERT_EQ(bh[m][i], kernels::f32_to_f16_bits(b[m][i]));
        }
      }
      // The last module and the first, in that order, into other buffers.
      const std::vector<i64> some = {static_cast<i64>(nm) - 1, 0};
      std::vector<float> la(a.back().size()), lb(b.back().size()), fa(a[0].size()), fb(b[0].size());
      const std::vector<void*> sa = {la.data(), fa.data()}, sb = {lb.data(), fb.data()};
      rb.materialize(t, some, DType::F32, sa, sb);
      EXPECT_EQ(la, a.back());
      EXPECT_EQ(lb, b.back());
      EXPECT_EQ(fa, a[0]);
      EXPECT_EQ(fb, b[0]);
    }
  }
  EXPECT_EQ(seen.size(), 4u);  // rmm, rank, shared_rows, shared
  ResidentBundle rb(bundles[0], Device::cpu);
  std::vector<float> x(4096), y(4096);
  const std::vector<void*> one = {x.data()}, two = {y.data()}, none = {nullptr};
  const std::vector<i64> first = {0}, outside = {99};
  EXPECT_THROW(rb.materialize(4, first, DType::F32, one, two), usage_error);
  EXPECT_THROW(rb.materialize(0, outside, DType::F32, one, two), usage_error);
  EXPECT_THROW(rb.materialize(0, first, DType::F64, one, two), usage_error);
  EXPECT_THROW(rb.materialize(0, first, DType::F32, none, two), usage_error);
  EXPECT_THROW(rb.materialize(0, {}, DType::F32, one, two), usage_error);  // every module, one buffer
  EXPECT_THROW(ResidentBundle(tmp / "family" / "task0", Device::cpu), io_error);
}

// The device path (pinned tables, uploads, events) on the deferred backend, whose queued work
// runs only when its stream is synchronized, and on a GPU where one is usable: calls queued back
// to back return with nothing run on the deferred backend (the host did not wait for the kernels
// it queued), tables reused in turn are never rewritten under a copy that has not run, and every
// call's outputs are the CPU's, bit for bit, in f32 and bf16; save_adapter writes the CPU's folder.
class ResidentBundleOn : public ::testing::TestWithParam<std::string> {};

TEST_P(ResidentBundleOn, CallsQueueWithoutHostWaitsWithTheCpusBits) {
  REVMERGE_BACKEND_OR_SKIP(made, GetParam());
  const std::shared_ptr<Backend> be = std::move(made);
  test::TempDir tmp;
  const auto family = write_family(tmp / "family");
  auto o = store_options(family, StoreMethod::automatic, tmp / "auto");
  o.storage.fraction = 0.5;
  merge_store(o);
  ResidentBundle on_cpu(o.out, Device::cpu);
  const auto device = open_resident_on(o.out, be);
  EXPECT_FALSE(device->on_host());
  EXPECT_GT(device->memory_bytes(), on_cpu.memory_bytes());  // the tables
  const auto& man = on_cpu.manifest();
  const std::size_t nm = man.modules.size();
  const auto tasks = static_cast<i64>(man.tasks.size());
  struct Call {
    i64 task;
    DType dtype;
    std::vector<std::shared_ptr<void>> a, b;
  };
  std::vector<Call> calls;
  for (int c = 0; c < 8; ++c) {  // more calls than tables: each is reused
    Call call{c % tasks, c % 2 ? DType::BF16 : DType::F32, {}, {}};
    std::vector<void*> a, b;
    for (const auto& mod : man.modules) {
      const auto element = dtype_size(call.dtype);
      call.a.push_back(device->allocate(mod.rank * mod.in * element));
      call.b.push_back(device->allocate(mod.out * mod.rank * element));
      a.push_back(call.a.back().get()), b.push_back(call.b.back().get());
    }
    device->materialize(call.task, {}, call.dtype, a, b);
    calls.push_back(std::move(call));
    if (c == 2 && GetParam() == "deferred") {  // three calls, three tables: nothing has run yet
      const auto& first = calls[0].a[0];       // (the deferred backend's memory is the host's)
      std::vector<unsigned char> unwritten(man.modules[0].rank * man.modules[0].in * 4, 0xff);
      EXPECT_EQ(std::memcmp(first.get(), unwritten.data(), unwritten.size()), 0)
          << "a call waited on the host for an earlier call's kernel";
    }
  }
  device->synchronize();
  for (const auto& call : calls) {
    std::vector<void*> pa, pb;
    std::vector<std::vector<std::byte>> a(nm), b(nm), got_a(nm), got_b(nm);
    for (std::size_t m = 0; m < nm; ++m) {
      const auto& mod = man.modules[m];
      a[m].resize(mod.rank * mod.in * dtype_size(call.dtype)), b[m].resize(mod.out * mod.rank * dtype_size(call.dtype));
      got_a[m].resize(a[m].size()), got_b[m].resize(b[m].size());
      pa.push_back(a[m].data()), pb.push_back(b[m].data());
      be->download(got_a[m].data(), call.a[m].get(), a[m].size(), {});
      be->download(got_b[m].data(), call.b[m].get(), b[m].size(), {});
    }
    be->synchronize({});
    on_cpu.materialize(call.task, {}, call.dtype, pa, pb);
    for (std::size_t m = 0; m < nm; ++m) {
      ASSERT_EQ(got_a[m], a[m]) << "task " << call.task << " module " << m;
      ASSERT_EQ(got_b[m], b[m]) << "task " << call.task << " module " << m;
    }
  }
  on_cpu.save_adapter(man.tasks[1].name, tmp / "from-cpu");
  device->save_adapter(man.tasks[1].name, tmp / "from-device");
  EXPECT_EQ(test::read_bytes(tmp / "from-device" / "adapter_model.safetensors"),
            test::read_bytes(tmp / "from-cpu" / "adapter_model.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(Devices, ResidentBundleOn, ::testing::Values("deferred", "cuda"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace revmerge
