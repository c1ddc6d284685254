// Inputs that another program shrinks while they are mapped: an error naming the file, not a
// SIGBUS that ends the process; no output is committed meanwhile.
#include "revmerge/mapped_file.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>

#include "core/atomic_output.hpp"
#include "revmerge/error.hpp"
#include "revmerge/safetensors.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

const std::size_t kPage = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const io_error& e) {
    return e.what();
  }
  return "(no io_error)";
}

TEST(MappedFile, AFileThatShrinksIsAnErrorNamingItNotACrash) {
  test::TempDir dir;
  test::write_bytes(dir / "in.bin", std::string(3 * kPage, 'x'));
  {
    const MappedFile m(dir / "in.bin");
    EXPECT_NO_THROW(m.check_intact());
    std::filesystem::resize_file(dir / "in.bin", kPage);
    const volatile std::byte* p = m.bytes().data();
    const std::byte first = p[0], past = p[2 * kPage + 5], last = p[3 * kPage - 1];
    EXPECT_EQ(first, std::byte{'x'});
    EXPECT_EQ(past, std::byte{0});  // past the new end: zeros, not SIGBUS
    EXPECT_EQ(last, std::byte{0});
    const auto msg = message_of([&] { m.check_intact(); });
    EXPECT_NE(msg.find("in.bin: the file became shorter while it was being read"), std::string::npos) << msg;

    // No output is committed while that input is mapped.
    AtomicFile out(dir / "out.txt", false);
    out.write_at(0, "y", 1);
    EXPECT_NE(message_of([&] { out.commit(); }).find("in.bin: the file became shorter"), std::string::npos);
    EXPECT_FALSE(std::filesystem::exists(dir / "out.txt"));
  }
  write_file_atomic(dir / "out.txt", "y", false);  // the mapping is gone: outputs commit again
  EXPECT_EQ(test::read_bytes(dir / "out.txt"), "y");
}

// Prefetching maps pages in without changing what is read, and a range past a shrunken file's
// end (or past the mapping) is neither a crash nor an error: the reads report it, as before.
TEST(MappedFile, PrefetchIsAHintThatNeverFails) {
  test::TempDir dir;
  std::string bytes(4 * kPage, 'a');
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>('a' + i % 23);
  test::write_bytes(dir / "in.bin", bytes);
  const MappedFile m(dir / "in.bin");
  m.prefetch(kPage / 2, 2 * kPage);  // not page-aligned
  m.prefetch(3 * kPage, 10 * kPage);  // past the end: clamped
  m.prefetch(9 * kPage, kPage);       // wholly past it: nothing
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(m.bytes().data()), m.bytes().size()), bytes);
  std::filesystem::resize_file(dir / "in.bin", kPage);
  m.prefetch(0, 4 * kPage);  // the pages beyond the new end cannot be mapped: no SIGBUS
  EXPECT_NO_THROW(m.check_intact());
  const volatile std::byte* q = m.bytes().data();
  const std::byte past = q[3 * kPage];
  EXPECT_EQ(past, std::byte{0});  // read past the end: zeros, and now an error
  EXPECT_THROW(m.check_intact(), io_error);
}

TEST(MappedFile, ATruncatedTensorIsAnErrorOnRead) {
  test::TempDir dir;
  const std::vector<float> values(4 * kPage, 1.0f);
  write_safetensors(dir / "t.safetensors",
                    {{{"w", DType::F32, {static_cast<std::int64_t>(values.size())}},
                      std::as_bytes(std::span(values))}});
  const SafetensorsFile f(dir / "t.safetensors");
  std::filesystem::resize_file(dir / "t.safetensors", 2 * kPage);
  const auto msg = message_of([&] { (void)f.read_f32("w"); });
  EXPECT_NE(msg.find("t.safetensors: the file became shorter"), std::string::npos) << msg;
}

// A SIGBUS that is not about a mapped input still ends the process as it would without the
// handler (killed by the signal; under AddressSanitizer, its report and exit status).
TEST(MappedFileDeathTest, OtherSigbusStillEndTheProcess) {
  test::TempDir dir;
  test::write_bytes(dir / "in.bin", std::string(kPage, 'x'));
  EXPECT_EXIT(
      {
        const MappedFile m(dir / "in.bin");
        ::raise(SIGBUS);
        std::exit(0);
      },
      [](int status) {
        return (WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS) ||
               (WIFEXITED(status) && WEXITSTATUS(status) != 0);
      },
      "");
}

}  // namespace
}  // namespace revmerge
