#pragma once
/// \file
/// A read-only memory mapping of a whole file.
#include <cstddef>
#include <filesystem>
#include <span>

namespace revmerge {

/// Maps a file read-only for the object's lifetime. Move-only. An empty file maps to an empty
/// span. Throws io_error naming the path and the OS error. A file that another program
/// shrinks while it is mapped does not end the process: the bytes past its new end read as
/// zeros and check_intact() throws (as does every output's commit while this object lives).
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  /// The whole file's bytes; valid while this object lives.
  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  const std::filesystem::path& path() const noexcept { return path_; }
  /// Tells the kernel this process is done with bytes [offset, offset + length): the whole
  /// pages inside leave the process's resident set (they stay in the page cache), so streaming
  /// through a large file does not grow the RSS. Reading them again is still valid.
  void drop_pages(std::size_t offset, std::size_t length) const noexcept;
  /// Maps bytes [offset, offset + length) into the process ahead of their use (the kernel reads
  /// what is not in the page cache), so a later copy of them runs without page faults — for a
  /// helper thread while the device works on the previous piece. A hint: failure is ignored.
  void prefetch(std::size_t offset, std::size_t length) const noexcept;
  /// Throws io_error naming the file when a read of its bytes went past the file's end (it
  /// shrank after it was mapped); call after using bytes() and before trusting what was read.
  void check_intact() const;

 private:
  void release() noexcept;
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  int guard_slot_ = -1;  // see core/mapping_guard.hpp
};

}  // namespace revmerge
