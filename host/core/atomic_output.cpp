#include "core/atomic_output.hpp"

#include <fcntl.h>
#include <stdio.h>  // renameat2
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "core/mapping_guard.hpp"
#include "revmerge/error.hpp"

namespace fs = std::filesystem;

namespace revmerge {
namespace {

// mkstemp and mkdtemp create 0600 files and 0700 folders; outputs get what an ordinary create
// gives (0666 / 0777 less the umask), so a serving stack running as another user can read them.
// Read once, while the library loads: umask() can only be read by setting it, which must not
// race with threads creating files.
const mode_t kUmask = [] {
  const mode_t m = ::umask(022);
  ::umask(m);
  return m;
}();

[[noreturn]] void os_fail(const fs::path& p, std::string_view what, int err) {
  throw io_error(p.string() + ": " + std::string(what) + ": " + std::strerror(err));
}

// "out/" names the folder "out": without this its parent would be "out" itself (created as the
// output's parent, then refused as existing) and its temporary name "..revmerge-tmp-*" inside it.
fs::path named(fs::path p) {
  while (!p.has_filename() && p.has_relative_path()) p = p.parent_path();
  return p;
}

fs::path parent_or_dot(const fs::path& p) {
  return p.has_parent_path() ? p.parent_path() : fs::path(".");
}

// "<dir>/.<name>.<tag>-XXXXXX", the template mkstemp / mkdtemp fill in.
std::string temp_template(const fs::path& target, std::string_view tag) {
  std::string name = ".";
  name += target.filename().string();
  name += '.';
  name += tag;
  name += "-XXXXXX";
  return (parent_or_dot(target) / name).string();
}

[[noreturn]] void already_exists(const fs::path& target) {
  throw io_error(target.string() + ": already exists (pass --force to replace it)");
}

// Makes a rename in `folder` durable: until the folder itself is synced, a power loss can undo
// the rename and the output vanishes although its bytes were synced.
void sync_folder(const fs::path& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) os_fail(folder, "cannot open the folder to sync it", errno);
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  // Some file systems cannot sync a folder (EINVAL); their renames are as durable as they get.
  if (rc != 0 && e != EINVAL) os_fail(folder, "fsync of the folder failed", e);
}

// renameat2 with flags; false when this file system (or kernel) does not take them, so the
// caller falls back to a check and a plain rename.
bool rename_with(const fs::path& from, const fs::path& to, unsigned flags, int& err) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), flags) == 0) {
    err = 0;
    return true;
  }
  err = errno;
  return err != EINVAL && err != ENOSYS && err != ENOTSUP;
}

// Gives `from` the name `to`, refusing an existing `to` in the same step (no window in which
// another writer's output could appear and be overwritten).
void rename_no_replace(const fs::path& from, const fs::path& to) {
  int err = 0;
  if (!rename_with(from, to, RENAME_NOREPLACE, err)) {
    refuse_existing(to, false);
    if (::rename(from.c_str(), to.c_str()) == 0) return;
    err = errno;
  }
  if (err == EEXIST || err == ENOTEMPTY) already_exists(to);
  if (err != 0) os_fail(to, "cannot rename into place", err);
}

}  // namespace

std::vector<fs::path> temporaries_beside(const fs::path& given) {
  const auto target = named(given);
  const auto name = target.filename().string();
  if (name.empty() || name == "." || name == "..") return {};
  std::string prefix = ".";  // temp_template's names (not "." + name: GCC 12 imagines a memcpy overlap)
  prefix += name;
  prefix += '.';
  std::vector<fs::path> found;
  std::error_code ec;
  for (fs::directory_iterator it(parent_or_dot(target), ec), end; !ec && it != end; it.increment(ec)) {
    const auto entry = it->path().filename().string();
    if (entry.starts_with(prefix) && (entry.find("revmerge-tmp-") != std::string::npos ||
                                      entry.find("revmerge-old-") != std::string::npos))
      found.push_back(it->path());
  }
  return found;
}

void refuse_existing(const fs::path& target, bool overwrite) {
  std::error_code ec;
  if (!overwrite && fs::exists(fs::symlink_status(target, ec)))
    already_exists(target);
}

void refuse_replacing_inputs(const fs::path& target, const std::vector<fs::path>& inputs,
                             std::string_view target_label, std::string_view overwrite_label) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(target, ec))) return;
  const auto whole = [](const fs::path& p) {
    std::error_code e;
    const auto c = fs::weakly_canonical(p, e);
    return e ? fs::absolute(p, e).lexically_normal() : c;
  };
  const auto out = whole(target);
  for (const auto& in : inputs) {
    if (in.empty()) continue;
    const auto rel = whole(in).lexically_relative(out);
    if (rel.empty() || *rel.begin() == "..") continue;
    throw usage_error(std::string(target_label) + " " + target.string() + ": " +
                      (rel == "." ? "it is an input (" + in.string() + ")"
                                  : "it holds an input (" + in.string() + ")") +
                      ", which " + std::string(overwrite_label) +
                      " would replace with the output; write the output elsewhere");
  }
}

AtomicFile::AtomicFile(fs::path target, bool overwrite)
    : target_(named(std::move(target))), overwrite_(overwrite) {
  refuse_existing(target_, overwrite_);
  std::string tmpl = temp_template(target_, "revmerge-tmp");
  fd_ = ::mkostemp(tmpl.data(), O_CLOEXEC);
  if (fd_ < 0) os_fail(parent_or_dot(target_), "cannot create a file in this folder", errno);
  temp_ = tmpl;
  if (::fchmod(fd_, 0666 & ~kUmask) != 0) os_fail(temp_, "cannot set its permissions", errno);
  open_direct();
}

AtomicFile::AtomicFile(Join, fs::path temp, fs::path target)
    : target_(named(std::move(target))), temp_(std::move(temp)), joined_(true) {
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd_ < 0) os_fail(temp_, "cannot open the output being written to join it", errno);
  open_direct();
}

AtomicFile::~AtomicFile() {
  if (direct_fd_ >= 0) ::close(direct_fd_);
  if (fd_ >= 0) ::close(fd_);
  if (!temp_.empty() && !joined_) ::unlink(temp_.c_str());
}

void AtomicFile::open_direct() {
  // Outputs bypass the page cache where they can: a model written is not read back soon, and
  // filling the cache with it costs a fresh page per 4 KiB (on a VM that returns freed memory
  // to its host, a fault in the host too: 1.3 GB took 0.3–9 s through the cache, 1 s direct)
  // and evicts the inputs. Best effort: any refusal leaves every write to the page cache.
  const int fd = ::open(temp_.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return;
#ifdef STATX_DIOALIGN
  struct statx st {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &st) == 0 && (st.stx_mask & STATX_DIOALIGN) != 0 &&
      (st.stx_dio_offset_align == 0 || st.stx_dio_offset_align > kDirectAlign ||
       st.stx_dio_mem_align > kDirectAlign)) {
    ::close(fd);
    return;
  }
#endif
  direct_fd_ = fd;
  direct_ = true;
}

std::size_t AtomicFile::write_direct(std::uint64_t offset, const char* data, std::size_t size) {
  std::size_t done = 0;
  while (done < size) {
    if (!direct_.load()) break;
    const ssize_t n = ::pwrite(direct_fd_, data + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      // Refused (an alignment this file system wants, or no direct I/O after all): the rest
      // of this file goes through the cache. Real failures (ENOSPC, EIO) come back there.
      if (errno == EINVAL || errno == ENOTSUP || errno == EOPNOTSUPP) {
        direct_ = false;
        break;
      }
      os_fail(target_, "write failed", errno);
    }
    done += static_cast<std::size_t>(n);
    if (done % kDirectAlign != 0) break;  // a short write off the grid: the rest cached
  }
  return done;
}

void AtomicFile::write_at(std::uint64_t offset, const void* data, std::size_t size) {
  const auto* p = static_cast<const char*>(data);
  if (size >= kDirectMin && direct_.load() && (reinterpret_cast<std::uintptr_t>(p) - offset) % kDirectAlign != 0)
    write_staged(offset, p, size);
  else
    write_aligned(offset, p, size);
}

void AtomicFile::write_staged(std::uint64_t offset, const char* p, std::size_t size) {
  // Tensors packed one after another in a file (a bundle's, from its results' buffer) rarely
  // lie in memory as they lie in the file; through the page cache their bytes were copied by
  // the kernel into fresh pages and written back from there (on a 2-core VM, ~9 % of an RMM
  // merge's CPU time beside its compute). Copied here into a buffer placed as the file offset
  // asks, in parts that end on the file's block boundaries, every whole block goes direct and
  // only the write's two edge blocks through the cache. One buffer per writing thread, kept.
  constexpr std::size_t kPart = std::size_t{1} << 20;
  thread_local std::unique_ptr<char[]> storage;
  if (!storage) storage.reset(new char[kPart + 2 * kDirectAlign]);
  char* aligned = storage.get() + (kDirectAlign - reinterpret_cast<std::uintptr_t>(storage.get()) % kDirectAlign);
  const std::uint64_t end = offset + size;
  for (std::uint64_t at = offset; at < end;) {
    const std::uint64_t stop = std::min<std::uint64_t>(end, at / kDirectAlign * kDirectAlign + kPart);
    char* to = aligned + direct_shift(at);
    std::memcpy(to, p + (at - offset), static_cast<std::size_t>(stop - at));
    write_aligned(at, to, static_cast<std::size_t>(stop - at));
    at = stop;
  }
}

void AtomicFile::write_aligned(std::uint64_t offset, const char* p, std::size_t size) {
  if (size >= kDirectMin && direct_.load() &&
      (reinterpret_cast<std::uintptr_t>(p) - offset) % kDirectAlign == 0) {
    const std::uint64_t body = (offset + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
    const std::uint64_t end = (offset + size) / kDirectAlign * kDirectAlign;
    if (end > body) {
      // The edges' blocks hold bytes of neighbouring writes: through the cache, so that no
      // block is ever written both ways.
      write_cached(offset, p, body - offset);
      const auto direct = write_direct(body, p + (body - offset), end - body);
      write_cached(body + direct, p + (body - offset) + direct, offset + size - body - direct);
      return;
    }
  }
  write_cached(offset, p, size);
}

void AtomicFile::write_cached(std::uint64_t offset, const char* p, std::size_t size) {
  if (size == 0) return;
  const std::uint64_t begin = offset, length = size;
  while (size > 0) {
    const ssize_t n = ::pwrite(fd_, p, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      os_fail(target_, "write failed", errno);
    }
    p += n;
    offset += static_cast<std::uint64_t>(n);
    size -= static_cast<std::size_t>(n);
  }
  // Every 8 MiB written start their writeback now (a hint; errors surface at commit's fsync),
  // so a multi-GB output made of many small tensors does not pile up dirty pages for one long
  // fsync at the end.
  std::lock_guard lock(unsynced_mutex_);
  unsynced_begin_ = unsynced_ ? std::min(unsynced_begin_, begin) : begin;
  unsynced_end_ = unsynced_ ? std::max(unsynced_end_, begin + length) : begin + length;
  unsynced_ += length;
  if (unsynced_ >= (std::uint64_t{8} << 20)) {
    ::sync_file_range(fd_, static_cast<off_t>(unsynced_begin_),
                      static_cast<off_t>(unsynced_end_ - unsynced_begin_), SYNC_FILE_RANGE_WRITE);
    unsynced_ = 0;
  }
}

void AtomicFile::resize(std::uint64_t size) {
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) os_fail(target_, "cannot size file", errno);
}

void AtomicFile::commit() {
  direct_ = false;
  if (direct_fd_ >= 0) ::close(std::exchange(direct_fd_, -1));
  if (::fsync(fd_) != 0) os_fail(target_, "fsync failed", errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) os_fail(target_, "close failed", errno);
  if (joined_) return;
  check_mapped_inputs_intact();  // never an output made from an input that shrank meanwhile
  // A file is replaced by rename() in one step: readers see the old file or the new one.
  if (!overwrite_) {
    rename_no_replace(temp_, target_);
  } else if (::rename(temp_.c_str(), target_.c_str()) != 0) {
    os_fail(target_, "cannot rename into place", errno);
  }
  temp_.clear();
  sync_folder(parent_or_dot(target_));
}

void write_file_atomic(const fs::path& target, std::string_view content, bool overwrite) {
  AtomicFile f(target, overwrite);
  f.write_at(0, content.data(), content.size());
  f.commit();
}

StagedDir::StagedDir(fs::path target, bool overwrite)
    : target_(named(std::move(target))), overwrite_(overwrite) {
  refuse_existing(target_, overwrite_);
  std::error_code ec;
  for (auto p = parent_or_dot(target_);
       !p.empty() && fs::symlink_status(p, ec).type() == fs::file_type::not_found; p = p.parent_path()) {
    created_.push_back(p);
    if (!p.has_relative_path()) break;
  }
  try {
    fs::create_directories(parent_or_dot(target_), ec);
    if (ec) throw io_error(parent_or_dot(target_).string() + ": cannot create folder: " + ec.message());
    std::string tmpl = temp_template(target_, "revmerge-tmp");
    if (::mkdtemp(tmpl.data()) == nullptr)
      os_fail(parent_or_dot(target_), "cannot create a folder here", errno);
    temp_ = tmpl;
    if (::chmod(temp_.c_str(), 0777 & ~kUmask) != 0) os_fail(temp_, "cannot set its permissions", errno);
  } catch (...) {  // no destructor runs for a constructor that throws
    if (!temp_.empty()) fs::remove_all(temp_, ec);
    remove_created();
    throw;
  }
}

void StagedDir::remove_created() noexcept {
  std::error_code ec;
  for (const auto& p : created_)
    if (!fs::remove(p, ec)) return;  // not empty (something else wrote there meanwhile): kept
}

StagedDir::~StagedDir() {
  if (committed_) return;
  // The other workers of a merge may be removing their own temporary files from the folder as
  // this runs (each with a shard of its own, leaving on the same failure): a file that vanishes
  // mid-walk stops remove_all, so it walks again while the folder is there.
  std::error_code ec;
  for (int attempt = 0; attempt < 20; ++attempt) {
    fs::remove_all(temp_, ec);
    if (!fs::exists(temp_, ec)) {
      remove_created();
      return;
    }
    std::this_thread::yield();
  }
}

void StagedDir::commit() {
  check_mapped_inputs_intact();
  std::error_code ec;
  if (!overwrite_) {
    rename_no_replace(temp_, target_);
  } else {
    // Swap the new folder and the old output in one step, so the target's name never points at
    // nothing; the old output then lies under the temporary name and is removed.
    int err = 0;
    if (rename_with(temp_, target_, RENAME_EXCHANGE, err) && err == 0) {
      committed_ = true;
      fs::remove_all(temp_, ec);
      sync_folder(parent_or_dot(target_));
      return;
    }
    if (err == ENOENT && !fs::exists(fs::symlink_status(target_, ec))) {
      rename_no_replace(temp_, target_);  // nothing to replace (a racing writer is refused)
    } else {
      replace_in_two_steps();  // a file system without RENAME_EXCHANGE
    }
  }
  committed_ = true;
  sync_folder(parent_or_dot(target_));
}

void StagedDir::replace_in_two_steps() {
  std::error_code ec;
  fs::path old;
  if (fs::exists(fs::symlink_status(target_, ec))) {
    // Move the old output aside first, so a failure here leaves it intact under its name.
    std::string tmpl = temp_template(target_, "revmerge-old");
    if (::mkdtemp(tmpl.data()) == nullptr) os_fail(target_, "cannot replace", errno);
    old = fs::path(tmpl) / "old";
    if (::rename(target_.c_str(), old.c_str()) != 0) os_fail(target_, "cannot replace", errno);
  }
  if (::rename(temp_.c_str(), target_.c_str()) != 0) {
    const int e = errno;
    if (!old.empty()) ::rename(old.c_str(), target_.c_str());
    os_fail(target_, "cannot rename into place", e);
  }
  if (!old.empty()) fs::remove_all(old.parent_path(), ec);
}

}  // namespace revmerge
