// The deferred backend catches what it is there to catch: results read before a synchronize,
// staging buffers refilled under a pending upload, buffers freed under pending work.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "backend/deferred_backend.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

TEST(DeferredBackend, WorkRunsAtSynchronizeAndADownloadShowsOnlyThen) {
  auto be = test::make_deferred_backend();
  EXPECT_FALSE(be->shares_host_memory());
  const std::vector<float> x = {1, 2, 3};
  auto d = be->allocate(3 * sizeof(float));
  be->upload(d.data(), x.data(), 3 * sizeof(float), {});
  auto e = be->allocate(3 * sizeof(float));
  be->copy(e.data(), d.data(), 3 * sizeof(float), {});
  be->copy(d.data(), e.data(), 3 * sizeof(float), {});
  std::vector<float> got(3, -1.0f);
  be->download(got.data(), d.data(), 3 * sizeof(float), {});
  EXPECT_EQ(got, std::vector<float>(3, -1.0f)) << "nothing ran before the synchronize";
  be->synchronize({});
  EXPECT_EQ(got, x);
  // Streams are independent: synchronizing one runs nothing of another.
  const Stream other = be->create_stream();
  be->download(got.data(), d.data(), sizeof(float), other);
  got[0] = -1.0f;
  be->synchronize({});
  EXPECT_EQ(got[0], -1.0f);
  be->synchronize(other);
  EXPECT_EQ(got[0], 1.0f);
}

TEST(DeferredBackend, StagingIsReadWhenTheUploadRunsPageableMemoryWhenCalled) {
  auto be = test::make_deferred_backend();
  auto staging = be->allocate_staging(sizeof(float));
  auto d = be->allocate(2 * sizeof(float));
  float pageable = 1.0f;
  *staging.f32() = 1.0f;
  be->upload(d.f32(), staging.data(), sizeof(float), {});
  be->upload(d.f32() + 1, &pageable, sizeof(float), {});
  *staging.f32() = 2.0f;  // refilled before the upload ran
  pageable = 2.0f;
  std::vector<float> got(2);
  be->download(got.data(), d.data(), 2 * sizeof(float), {});
  be->synchronize({});
  EXPECT_EQ(got[0], 2.0f) << "a pinned source is read when the copy runs";
  EXPECT_EQ(got[1], 1.0f) << "a pageable source is copied by the call";
}

TEST(DeferredBackend, MemoryIsNanUnwrittenAndOnceFreedAndAWriteAfterFreeThrows) {
  auto be = test::make_deferred_backend();
  auto unwritten = be->allocate(sizeof(float));
  float got = 0;
  be->download(&got, unwritten.data(), sizeof(float), {});
  be->synchronize({});
  EXPECT_TRUE(std::isnan(got));

  const std::vector<float> one = {1.0f};
  auto src = be->allocate(sizeof(float)), dst = be->allocate(sizeof(float));
  be->upload(src.data(), one.data(), sizeof(float), {});
  be->synchronize({});
  be->copy(dst.data(), src.data(), sizeof(float), {});  // reads src after it is freed below
  be->download(&got, dst.data(), sizeof(float), {});
  src = DeviceBuffer{};
  be->synchronize({});
  EXPECT_TRUE(std::isnan(got)) << "read after free";

  auto out = be->allocate(sizeof(float));
  auto in = be->allocate(sizeof(float));
  be->upload(in.data(), one.data(), sizeof(float), {});
  be->synchronize({});
  be->copy(out.data(), in.data(), sizeof(float), {});  // writes out after it is freed below
  out = DeviceBuffer{};
  EXPECT_THROW(be->synchronize({}), device_error);
}

// Events order streams as CUDA's do: a stream that waits on an event runs the other stream's
// work up to it first (and no further); a host wait on an event runs just that far; an event
// nobody waited for has not completed.
TEST(DeferredBackend, EventsOrderStreamsAndTheHostUpToTheirPointOnly) {
  auto be = test::make_deferred_backend();
  const Stream copy = be->create_stream(), compute = be->create_stream();
  const std::vector<float> x = {1, 2};
  auto a = be->allocate(2 * sizeof(float)), b = be->allocate(2 * sizeof(float));
  be->upload(a.data(), x.data(), sizeof(float), copy);
  const Event first = be->record_event(copy);
  be->upload(a.f32() + 1, x.data() + 1, sizeof(float), copy);  // after the event
  EXPECT_FALSE(be->query_event(first));
  be->wait_event(compute, first);
  be->copy(b.data(), a.data(), 2 * sizeof(float), compute);
  std::vector<float> got(2, -1.0f);
  be->download(got.data(), b.data(), 2 * sizeof(float), compute);
  const Event done = be->record_event(compute);
  be->synchronize_event(done);
  EXPECT_EQ(got[0], 1.0f) << "the upload before the event ran first";
  EXPECT_TRUE(std::isnan(got[1])) << "the upload after the event had not run";
  EXPECT_TRUE(be->query_event(first));
  EXPECT_TRUE(be->query_event(done));
}

TEST(DeferredBackend, AFillRunsInOrderAndSetsEveryByte) {
  auto be = test::make_deferred_backend();
  auto d = be->allocate(16);
  be->fill(d.data(), 0xff, 16, {});
  std::vector<unsigned long long> got(2, 0);
  be->download(got.data(), d.data(), 16, {});
  EXPECT_EQ(got[0], 0u);
  be->synchronize({});
  EXPECT_EQ(got, std::vector<unsigned long long>(2, ~0ull));
}

}  // namespace
}  // namespace revmerge
