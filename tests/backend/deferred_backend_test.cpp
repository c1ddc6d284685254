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
  be->round_to(d.f32(), 3, DType::BF16, {});
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
  be->subtract(src.f32(), src.f32(), dst.f32(), 1, {});  // reads src after it is freed below
  be->download(&got, dst.data(), sizeof(float), {});
  src = DeviceBuffer{};
  be->synchronize({});
  EXPECT_TRUE(std::isnan(got)) << "read after free";

  auto out = be->allocate(sizeof(float));
  auto in = be->allocate(sizeof(float));
  be->upload(in.data(), one.data(), sizeof(float), {});
  be->synchronize({});
  be->subtract(in.f32(), in.f32(), out.f32(), 1, {});  // writes out after it is freed below
  out = DeviceBuffer{};
  EXPECT_THROW(be->synchronize({}), device_error);
}

}  // namespace
}  // namespace revmerge
