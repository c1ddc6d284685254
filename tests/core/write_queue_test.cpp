#include "core/write_queue.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace revmerge {
namespace {

// Writes of growing sizes through a queue bounded below two of them: each take waits for a
// written block to come back, frees those too small for it, and every byte lands where it was
// queued — from two threads at once.
TEST(WriteQueue, BoundedQueueWritesEveryPartWhereItBelongs) {
  test::TempDir dir;
  std::vector<std::size_t> sizes;
  for (std::size_t s = 1000; s < (std::size_t{1} << 20); s = s * 3 / 2 + 17) sizes.push_back(s);
  std::vector<std::size_t> offsets(sizes.size() + 1, 0);
  for (std::size_t i = 0; i < sizes.size(); ++i) offsets[i + 1] = offsets[i] + sizes[i];
  std::string expected(offsets.back(), '\0');
  for (std::size_t k = 0; k < expected.size(); ++k) expected[k] = static_cast<char>((k * 131 + k / 4099) & 0xff);
  AtomicFile file(dir / "out.bin", false);
  file.resize(expected.size());
  {
    WriteQueue queue(std::uint64_t{3} << 19);  // 1.5 MiB: one or two of the larger parts
    const auto writer = [&](std::size_t parity) {
      for (std::size_t i = parity; i < sizes.size(); i += 2) {
        auto block = queue.take(sizes[i] + AtomicFile::kDirectAlign);
        ASSERT_GE(block.capacity(), sizes[i] + AtomicFile::kDirectAlign);
        const auto shift = AtomicFile::direct_shift(offsets[i]);
        std::memcpy(block.data() + shift, expected.data() + offsets[i], sizes[i]);
        queue.write(std::move(block), file, offsets[i], shift, sizes[i]);
      }
    };
    std::thread other(writer, 1);
    writer(0);
    other.join();
    queue.drain();
  }
  file.commit();
  EXPECT_EQ(test::read_bytes(dir / "out.bin"), expected);
}

}  // namespace
}  // namespace revmerge
