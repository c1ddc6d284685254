#include <gtest/gtest.h>

#include <sys/resource.h>

#include <cmath>
#include <csignal>
#include <cstdlib>

#include "revmerge/error.hpp"
#include "revmerge/safetensors.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

TEST(SafetensorsWriter, RoundTripsEveryFloatDtypeAlignedAndTiled) {
  test::TempDir dir;
  const std::vector<float> v = {1.0f, -2.5f, 0.125f, 3.0f, 7.0f, -0.5f};
  {
    SafetensorsWriter w(dir / "o.safetensors",
                        {{"h", DType::F16, {2, 3}}, {"b", DType::BF16, {6}},
                         {"d", DType::F64, {3, 2}}, {"f", DType::F32, {1, 6}}},
                        {{"format", "pt"}});
    for (const char* n : {"f", "b", "h", "d"}) w.write_f32(n, v);  // any order
    w.commit();
  }
  const SafetensorsFile f(dir / "o.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  for (const char* n : {"f", "b", "h", "d"}) EXPECT_EQ(f.read_f32(n), v) << n;
  // The data buffer starts 8-byte aligned and each tensor is aligned to its element size.
  const auto bytes = test::read_bytes(dir / "o.safetensors");
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  for (const auto& t : f.tensors()) EXPECT_EQ(t.begin % dtype_size(t.dtype), 0u) << t.name;
  EXPECT_EQ(f.tensors().front().dtype, DType::F64);  // largest elements first
}

// The writer sends a part to the file a million elements at a time: parts larger than that, at
// offsets that are not multiples of it, in every dtype, and an empty tensor.
TEST(SafetensorsWriter, LargePartsAtAnyOffsetLandWhereTheyBelong) {
  test::TempDir dir;
  const std::size_t count = (std::size_t{1} << 21) + 77, cut = (std::size_t{1} << 20) + 3;
  std::vector<float> v(count);
  for (std::size_t i = 0; i < count; ++i) v[i] = static_cast<float>(i % 251) - 125.0f;  // exact in bf16
  {
    SafetensorsWriter w(dir / "o.safetensors",
                        {{"f", DType::F32, {count}}, {"b", DType::BF16, {count}}, {"h", DType::F16, {count}},
                         {"d", DType::F64, {count}}, {"e", DType::BF16, {0}}});
    for (const char* n : {"f", "b", "h", "d"}) {  // the second part first
      w.write_f32_part(n, cut, std::span<const float>(v).subspan(cut), 2);
      w.write_f32_part(n, 0, std::span<const float>(v).first(cut), 2);
    }
    w.write_f32_part("e", 0, {}, 2);
    w.commit();
  }
  const SafetensorsFile f(dir / "o.safetensors");
  for (const char* n : {"f", "b", "h", "d"}) EXPECT_EQ(f.read_f32(n), v) << n;
  EXPECT_TRUE(f.read_f32("e").empty());
}

// Parts written behind the caller (write_behind) land byte for byte where the in-line writer
// puts them: with a queue of one block (each part waits for the last one's write) and with room
// for all of them, parts larger than a block and at offsets that are not multiples of it.
TEST(SafetensorsWriter, PartsWrittenBehindAreTheBytesWrittenInLine) {
  test::TempDir dir;
  const std::size_t count = (std::size_t{1} << 21) + 77, cut = (std::size_t{1} << 20) + 3;
  std::vector<float> v(count);
  for (std::size_t i = 0; i < count; ++i) v[i] = std::ldexp(static_cast<float>(i % 1009) - 504.3f, -static_cast<int>(i % 7));
  const auto write = [&](const std::string& file, std::uint64_t queue) {
    SafetensorsWriter w(dir / file, {{"f", DType::F32, {count}}, {"b", DType::BF16, {count}},
                                     {"h", DType::F16, {count}}, {"e", DType::BF16, {0}}});
    if (queue) w.write_behind(queue);
    for (const char* n : {"b", "f", "h"}) {
      w.write_f32_part(n, cut, std::span<const float>(v).subspan(cut), 2);
      w.write_f32_part(n, 0, std::span<const float>(v).first(cut), 2);
    }
    w.write_f32_part("e", 0, {}, 2);
    w.commit();
  };
  write("inline.safetensors", 0);
  write("one.safetensors", 1);
  write("all.safetensors", std::uint64_t{64} << 20);
  const auto expected = test::read_bytes(dir / "inline.safetensors");
  EXPECT_EQ(test::read_bytes(dir / "one.safetensors"), expected);
  EXPECT_EQ(test::read_bytes(dir / "all.safetensors"), expected);
}

// A write that fails behind the caller fails commit() (or the next part), and the output never
// appears: here the process's file size limit, lowered once the file is laid out, refuses the
// writes past its first MiB. One part (2^20 elements, the writer's unit): a second part's take()
// could already see the first one's failure, and whether it does is a race.
TEST(SafetensorsWriter, AWriteFailingBehindFailsTheCommitAndLeavesNothing) {
  test::TempDir dir;
  const std::vector<float> v(std::size_t{1} << 20, 0.5f);  // 2 MiB in bf16
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of the signal
  std::string message;
  bool queued = false;
  try {
    SafetensorsWriter w(dir / "o.safetensors", {{"b", DType::BF16, {static_cast<std::int64_t>(v.size())}}});
    w.write_behind(std::uint64_t{64} << 20);
    rlimit small = old;
    small.rlim_cur = rlim_t{1} << 20;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    w.write_f32_part("b", 0, v, 1);  // queued: returns before the disk refuses
    queued = true;
    w.commit();
  } catch (const io_error& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_TRUE(queued);
  EXPECT_NE(message.find("o.safetensors"), std::string::npos) << message;
  EXPECT_TRUE(test::list_dir(dir.path()).empty());
}

TEST(SafetensorsWriter, NothingAppearsUntilCommitAndAbandonedWritesLeaveNothing) {
  test::TempDir dir;
  {
    SafetensorsWriter w(dir / "o.safetensors", {{"x", DType::F32, {2}}});
    w.write_f32("x", std::vector<float>{1, 2});
    EXPECT_FALSE(std::filesystem::exists(dir / "o.safetensors"));
  }  // destroyed without commit
  EXPECT_TRUE(test::list_dir(dir.path()).empty());
  SafetensorsWriter w(dir / "o.safetensors", {{"x", DType::F32, {2}}, {"y", DType::F32, {1}}});
  w.write_f32("x", std::vector<float>{1, 2});
  EXPECT_THROW(w.commit(), usage_error);  // y never written
  EXPECT_THROW(w.write_f32("x", std::vector<float>{1, 2}), usage_error);
  EXPECT_THROW(w.write_f32("y", std::vector<float>{1, 2}), shape_error);
}

TEST(SafetensorsWriter, RefusesToReplaceAnExistingFileUnlessAsked) {
  test::TempDir dir;
  test::write_bytes(dir / "o.safetensors", "precious");
  EXPECT_THROW(SafetensorsWriter(dir / "o.safetensors", {{"x", DType::F32, {1}}}), io_error);
  EXPECT_EQ(test::read_bytes(dir / "o.safetensors"), "precious");
  SafetensorsWriter w(dir / "o.safetensors", {{"x", DType::F32, {1}}}, {}, /*overwrite=*/true);
  w.write_f32("x", std::vector<float>{4});
  w.commit();
  EXPECT_EQ(SafetensorsFile(dir / "o.safetensors").read_f32("x"), std::vector<float>{4});
}

TEST(SafetensorsWriter, RejectsBadDeclarations) {
  test::TempDir dir;
  EXPECT_THROW(SafetensorsWriter(dir / "o", {{"x", DType::F32, {1}}, {"x", DType::F32, {1}}}),
               usage_error);
  EXPECT_THROW(SafetensorsWriter(dir / "o", {{"__metadata__", DType::F32, {1}}}), usage_error);
  EXPECT_THROW(SafetensorsWriter(dir / "o", {{"x", DType::F32, {-1}}}), shape_error);
  EXPECT_TRUE(test::list_dir(dir.path()).empty());
}

// The Python safetensors package (the format's reference) reads what revmerge writes.
TEST(SafetensorsWriter, ReferenceImplementationReadsOurFiles) {
  REVMERGE_PYTHON_OR_SKIP("safetensors, numpy");
  test::TempDir dir;
  const std::vector<float> v = {1.0f, -2.5f, 0.125f, 3.0f};
  SafetensorsWriter w(dir / "o.safetensors",
                      {{"a.weight", DType::BF16, {2, 2}}, {"b", DType::F32, {4}}, {"c", DType::F16, {1, 4}}},
                      {{"format", "pt"}});
  for (const char* n : {"a.weight", "b", "c"}) w.write_f32(n, v);
  w.commit();
  const std::string script =
      "import numpy as np, sys\n"
      "from safetensors import safe_open\n"
      "f = safe_open(sys.argv[1], 'np')\n"
      "assert f.metadata() == {'format': 'pt'}, f.metadata()\n"
      "assert sorted(f.keys()) == ['a.weight', 'b', 'c']\n"
      "assert f.get_tensor('b').tolist() == [1.0, -2.5, 0.125, 3.0]\n"
      "assert f.get_tensor('c').astype('float32').tolist() == [[1.0, -2.5, 0.125, 3.0]]\n";
  test::write_bytes(dir / "check.py", script);
  const auto cmd = "python3 " + (dir / "check.py").string() + " " + (dir / "o.safetensors").string();
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

}  // namespace
}  // namespace revmerge
