#include "core/atomic_output.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

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

// "--out out/": the folder "out", staged beside it as for "out" (not inside a folder "out"
// created early and then refused as existing).
TEST(StagedDir, ATrailingSlashNamesTheSameFolder) {
  test::TempDir dir;
  {
    StagedDir s((dir / "out").string() + "//", false);
    EXPECT_EQ(s.target(), dir / "out");
    EXPECT_EQ(s.path().parent_path(), dir.path());
    EXPECT_TRUE(test::list_dir(dir.path()).size() == 1 && test::list_dir(dir.path())[0].starts_with(".out."));
  }
  EXPECT_TRUE(test::list_dir(dir.path()).empty()) << "a folder was left behind";
  StagedDir s((dir / "out").string() + "/", false);
  write_file_atomic(s.path() / "a.txt", "a", false);
  s.commit();
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"out"});
  EXPECT_EQ(test::read_bytes(dir / "out" / "a.txt"), "a");
  EXPECT_THROW(StagedDir((dir / "out").string() + "/", false), io_error);
}

// `--out new/deep/out` that fails: the folders made for it go again; one that was there stays,
// and so does one something else wrote into meanwhile.
TEST(StagedDir, FoldersMadeForAnOutputThatFailedGoAgain) {
  test::TempDir dir;
  std::filesystem::create_directories(dir / "was");
  { StagedDir s(dir / "was" / "new" / "deep" / "out", false); }
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"was"});
  EXPECT_TRUE(test::list_dir(dir / "was").empty());
  {
    StagedDir s(dir / "new" / "deep" / "out", false);
    write_file_atomic(dir / "new" / "other.txt", "x", false);
  }
  EXPECT_EQ(test::list_dir(dir / "new"), std::vector<std::string>{"other.txt"});
  StagedDir s(dir / "new2" / "out", false);
  s.commit();
  EXPECT_EQ(test::list_dir(dir / "new2"), std::vector<std::string>{"out"});
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

// --force swaps the new folder in with one rename: a reader polling the target's name never
// finds it missing (with a rename aside and a rename in, it does within a few hundred tries).
TEST(StagedDir, AReplacedFolderIsNeverMissing) {
  test::TempDir dir;
  std::filesystem::create_directories(dir / "out");
  std::atomic<bool> done = false;
  std::atomic<int> missing = 0;
  std::thread reader([&] {
    struct stat st{};
    while (!done)
      if (::stat((dir / "out").c_str(), &st) != 0) ++missing;
  });
  for (int i = 0; i < 400 && missing == 0; ++i) {
    StagedDir s(dir / "out", true);
    write_file_atomic(s.path() / "n.txt", std::to_string(i), false);
    s.commit();
  }
  done = true;
  reader.join();
  EXPECT_EQ(missing, 0);
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"out"});
  EXPECT_EQ(test::read_bytes(dir / "out" / "n.txt"), "399");
}

// Without overwrite, an output that appears between the start and the commit is kept and named.
TEST(StagedDir, AnOutputThatAppearsMeanwhileIsKept) {
  test::TempDir dir;
  StagedDir s(dir / "out", false);
  AtomicFile f(dir / "file", false);
  std::filesystem::create_directories(dir / "out");
  test::write_bytes(dir / "out" / "theirs.txt", "theirs");
  test::write_bytes(dir / "file", "theirs");
  try {
    s.commit();
    ADD_FAILURE() << "the folder that appeared was replaced";
  } catch (const io_error& e) {
    EXPECT_NE(std::string(e.what()).find("out: already exists"), std::string::npos) << e.what();
  }
  EXPECT_THROW(f.commit(), io_error);
  EXPECT_EQ(test::list_dir(dir / "out"), std::vector<std::string>{"theirs.txt"});
  EXPECT_EQ(test::read_bytes(dir / "file"), "theirs");
}

// Large writes whose memory is aligned like their file offset go around the page cache in
// whole blocks and through it at their edges; misaligned ones are copied through a buffer that
// is, a part at a time (the last size: several parts); whatever way each byte took, the file
// holds every write where it belongs, in any order, beside small writes sharing its blocks.
TEST(AtomicFile, LargeWritesAtAnyOffsetLandWhereTheyBelong) {
  constexpr std::size_t kAlign = AtomicFile::kDirectAlign;
  const std::size_t header = 1237;  // like a safetensors header: no alignment at all
  const std::vector<std::size_t> sizes = {AtomicFile::kDirectMin + 3 * kAlign + 77, 5, AtomicFile::kDirectMin * 2,
                                          AtomicFile::kDirectMin + 1, 4 * kAlign, AtomicFile::kDirectMin + 4093,
                                          AtomicFile::kDirectMin * 21 + 333};
  std::vector<std::size_t> offsets{header};
  for (const auto n : sizes) offsets.push_back(offsets.back() + n);
  std::string expected(offsets.back(), '\0');
  for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = static_cast<char>((i * 131 + i / 4099) % 251);
  test::TempDir dir;
  AtomicFile f(dir / "file", false);
  f.write_at(0, expected.data(), header);
  f.resize(expected.size());
  // Each buffer holds its bytes at the offset's place in an aligned block; the fourth and the
  // last are deliberately one byte off it.
  std::vector<std::byte> storage(sizes.back() + 3 * kAlign);
  void* aligned = storage.data();
  std::size_t room = storage.size();
  ASSERT_NE(std::align(kAlign, storage.size() - kAlign, aligned, room), nullptr);
  for (const std::size_t k : {2, 6, 0, 5, 3, 1, 4}) {
    const auto at = offsets[k];
    auto* buf = static_cast<char*>(aligned) + AtomicFile::direct_shift(at) + (k == 3 || k == 6 ? 1 : 0);
    std::memcpy(buf, expected.data() + at, sizes[k]);
    f.write_at(at, buf, sizes[k]);
  }
  f.commit();
  const auto written = test::read_bytes(dir / "file");
  ASSERT_EQ(written.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i)
    if (written[i] != expected[i]) FAIL() << "byte " << i << " differs";
}

// With overwrite, an output that is an input or holds one is refused by name, however the two
// are spelt; a sibling whose name merely starts the same, or an output not there yet, is not.
TEST(RefuseReplacingInputs, AnOutputThatIsOrHoldsAnInputIsRefusedByName) {
  test::TempDir dir;
  const auto task = dir / "tasks" / "qa";
  std::filesystem::create_directories(task);
  const auto message = [&](const std::filesystem::path& out, const std::vector<std::filesystem::path>& in) {
    try {
      refuse_replacing_inputs(out, in, "--out", "--force");
    } catch (const usage_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(message(task, {task}), "--out " + task.string() + ": it is an input (" + task.string() +
                                       "), which --force would replace with the output; write the "
                                       "output elsewhere");
  EXPECT_NE(message(dir / "tasks", {dir / "x", task}).find("it holds an input (" + task.string() + ")"),
            std::string::npos);
  EXPECT_NE(message(dir.path(), {task}).find("it holds an input"), std::string::npos);
  EXPECT_NE(message(dir / "tasks" / "." / "qa" / "", {dir / "tasks" / ".." / "tasks" / "qa"}).find("it is an input"),
            std::string::npos);
  std::filesystem::create_directory_symlink(task, dir / "link");
  EXPECT_NE(message(dir / "link", {task}).find("it is an input"), std::string::npos);
  std::filesystem::create_directories(dir / "tasks" / "qa2");
  EXPECT_EQ(message(dir / "tasks" / "qa2", {task}), "");
  EXPECT_EQ(message(task, {dir / "tasks" / "qa2", {}}), "");
  EXPECT_EQ(message(dir / "new", {dir / "new" / "inside"}), "");  // nothing there to replace
  // The library's own labels.
  EXPECT_THROW(refuse_replacing_inputs(task, {task}), usage_error);
}

TEST(AtomicFile, MissingFolderIsAnIoErrorAndLeavesNothing) {
  test::TempDir dir;
  EXPECT_THROW(AtomicFile(dir / "no-such-folder" / "x", false), io_error);
  EXPECT_TRUE(test::list_dir(dir.path()).empty());
}

}  // namespace
}  // namespace revmerge
