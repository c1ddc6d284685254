#include "core/atomic_output.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "revmerge/error.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

TEST(StagedDir, AppearsWholeOnCommitAndLeavesNothingOtherwise) {
  test::TempDir dir;
  {
    StagedDir s(dir / "out", false);
    write_file_atomic(s.path() / "a.txt", "a", false);
    EXPECT_FALSE(std::filesystem::exists(dir / "out"));
  }
  EXPECT_TRUE(test::list_dir(dir.path()).empty());
  StagedDir s(dir / "out", false);
  write_file_atomic(s.path() / "a.txt", "a", false);
  s.commit();
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"out"});
  EXPECT_EQ(test::read_bytes(dir / "out" / "a.txt"), "a");
}

TEST(StagedDir, ReplacesAnExistingFolderOnlyWhenAskedAndOnlyOnceComplete) {
  test::TempDir dir;
  std::filesystem::create_directories(dir / "out");
  test::write_bytes(dir / "out" / "old.txt", "old");
  EXPECT_THROW(StagedDir(dir / "out", false), io_error);
  {
    StagedDir s(dir / "out", true);
    write_file_atomic(s.path() / "new.txt", "new", false);
    EXPECT_TRUE(std::filesystem::exists(dir / "out" / "old.txt"));  // untouched until commit
  }
  EXPECT_TRUE(std::filesystem::exists(dir / "out" / "old.txt"));  // abandoned: old output kept
  StagedDir s(dir / "out", true);
  write_file_atomic(s.path() / "new.txt", "new", false);
  s.commit();
  EXPECT_EQ(test::list_dir(dir / "out"), std::vector<std::string>{"new.txt"});
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"out"});
}

// Outputs get the permissions an ordinary create gives (0666 / 0777 less the umask), not the
// 0600 / 0700 of the temporary names they are written under.
TEST(StagedDir, OutputsHaveTheUmasksPermissions) {
  const mode_t mask = ::umask(022);
  ::umask(mask);
  test::TempDir dir;
  StagedDir s(dir / "out", false);
  write_file_atomic(s.path() / "a.json", "{}", false);
  s.commit();
  struct stat st{};
  ASSERT_EQ(::stat((dir / "out").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0777 & ~mask);
  ASSERT_EQ(::stat((dir / "out" / "a.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0666 & ~mask);
}

TEST(AtomicFile, MissingFolderIsAnIoErrorAndLeavesNothing) {
  test::TempDir dir;
  EXPECT_THROW(AtomicFile(dir / "no-such-folder" / "x", false), io_error);
  EXPECT_TRUE(test::list_dir(dir.path()).empty());
}

}  // namespace
}  // namespace revmerge
