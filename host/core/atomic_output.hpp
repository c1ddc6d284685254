#pragma once
// Outputs that appear whole or not at all: everything is written under a temporary name beside
// its target and renamed into place on commit(); an uncommitted object removes what it wrote.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string_view>
#include <vector>

namespace revmerge {

/// Throws io_error naming `target` when it exists and `overwrite` is false.
void refuse_existing(const std::filesystem::path& target, bool overwrite);

/// Throws usage_error when `target` exists and is one of `inputs` or a folder holding one
/// (symbolic links followed): with overwrite, the output made from the inputs would replace
/// them — almost always a slip (`--out .`, a task's own folder). Every entry point that writes
/// with overwrite calls it before reading anything; the labels name the output ("--out",
/// "output") and what would replace it ("--force", "overwrite") in the message.
void refuse_replacing_inputs(const std::filesystem::path& target,
                             const std::vector<std::filesystem::path>& inputs,
                             std::string_view target_label = "output",
                             std::string_view overwrite_label = "overwrite");

/// The temporary files and folders beside `target` that writers of it (or of a scratch output
/// named after it, `target.something`) make and remove: what is there before a run starts was
/// left by one killed outright, or belongs to one still running.
std::vector<std::filesystem::path> temporaries_beside(const std::filesystem::path& target);

/// One file written under a temporary name in the target's folder.
class AtomicFile {
 public:
  AtomicFile(std::filesystem::path target, bool overwrite);
  /// Joins a file another process (or object) is writing under its temporary name `temp`:
  /// writes go to it, commit() only syncs and closes it (the one that created it renames it),
  /// and nothing is removed here on failure.
  enum class Join { existing };
  AtomicFile(Join, std::filesystem::path temp, std::filesystem::path target);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  /// Writes all of `data` at byte `offset` (pwrite; any order; several threads may write
  /// disjoint ranges at once). A large write goes around the page cache where the file system
  /// allows: its whole aligned blocks by direct I/O, its partial edge blocks through the cache.
  /// Its address should be congruent to `offset` modulo kDirectAlign (direct_shift); where it
  /// is not, it is copied through a buffer that is, a part at a time.
  void write_at(std::uint64_t offset, const void* data, std::size_t size);
  /// The alignment of memory and file offsets that direct writes need.
  static constexpr std::size_t kDirectAlign = 4096;
  /// Writes smaller than this always go through the page cache.
  static constexpr std::size_t kDirectMin = std::size_t{128} << 10;
  /// Where in a kDirectAlign-aligned buffer the bytes for `offset` should start so that
  /// write_at can write them directly.
  static std::size_t direct_shift(std::uint64_t offset) noexcept { return offset % kDirectAlign; }
  /// Sets the file's length (the unwritten parts read as zeros).
  void resize(std::uint64_t size);
  /// fsync, close, rename onto the target (refusing an existing target in the same step unless
  /// overwrite), fsync the folder.
  void commit();
  const std::filesystem::path& target() const noexcept { return target_; }
  /// The temporary name the file is written under until commit().
  const std::filesystem::path& temp() const noexcept { return temp_; }

 private:
  void write_cached(std::uint64_t offset, const char* data, std::size_t size);
  // write_at for an address congruent to `offset` (or a small write).
  void write_aligned(std::uint64_t offset, const char* data, std::size_t size);
  // write_at for a large write at any address: copied a part at a time into a thread's
  // buffer placed as direct_shift says.
  void write_staged(std::uint64_t offset, const char* data, std::size_t size);
  // Writes what it can of [offset, offset + size) directly; returns the bytes written (fewer
  // when the file system refuses direct I/O, which then stops it for this file).
  std::size_t write_direct(std::uint64_t offset, const char* data, std::size_t size);
  void open_direct();

  std::filesystem::path target_;
  std::filesystem::path temp_;
  int fd_ = -1;
  // The same file opened with O_DIRECT (-1 where the file system does not take it), and
  // whether it is still used (closed only with fd_: another thread may be writing with it).
  int direct_fd_ = -1;
  std::atomic<bool> direct_{false};
  bool overwrite_ = false;
  bool joined_ = false;  // written by others too; theirs to rename and to remove
  // Bytes written since writeback was last started, and the span they lie in.
  std::mutex unsynced_mutex_;
  std::uint64_t unsynced_ = 0, unsynced_begin_ = 0, unsynced_end_ = 0;
};

/// Writes `content` to `target` atomically.
void write_file_atomic(const std::filesystem::path& target, std::string_view content,
                       bool overwrite);

/// A folder built under a temporary name beside `target` and swapped in on commit(). With
/// `overwrite`, an existing target is replaced only once the new folder is complete, in one
/// step (RENAME_EXCHANGE); without, an existing target is refused in the same step as the
/// rename (RENAME_NOREPLACE). The parent folder is synced after.
class StagedDir {
 public:
  StagedDir(std::filesystem::path target, bool overwrite);
  ~StagedDir();
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;

  /// The temporary folder to write into.
  const std::filesystem::path& path() const noexcept { return temp_; }
  const std::filesystem::path& target() const noexcept { return target_; }
  void commit();

 private:
  void replace_in_two_steps();

  std::filesystem::path target_;
  std::filesystem::path temp_;
  bool overwrite_;
  bool committed_ = false;
  // The folders made for the output's parent, deepest first: removed again (while empty) when
  // nothing is committed, so a failed `--out new/deep/out` leaves no trace.
  std::vector<std::filesystem::path> created_;
  void remove_created() noexcept;
};

}  // namespace revmerge
