#pragma once
/// \file
/// safetensors files: a validating mmap reader and an atomic, streaming writer.
///
/// Layout: 8-byte little-endian header length N, N bytes of a UTF-8 JSON object (name ->
/// {dtype, shape, data_offsets} plus an optional "__metadata__" string map), then the data
/// buffer. Offsets are relative to the data buffer and must tile it exactly.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "revmerge/dtype.hpp"
#include "revmerge/mapped_file.hpp"

namespace revmerge {

/// Largest header revmerge accepts (the reference implementation's limit too).
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;
/// Most tensors one file may declare (real checkpoint shards hold a few thousand).
inline constexpr std::size_t kMaxSafetensorsTensors = 1u << 18;
/// Largest number of dimensions of one tensor.
inline constexpr std::size_t kMaxTensorRank = 16;

/// One tensor's entry in a safetensors header.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  ///< offset of the first byte, relative to the data buffer
  std::uint64_t end = 0;    ///< one past the last byte

  std::uint64_t nbytes() const noexcept { return end - begin; }
  std::uint64_t numel() const noexcept;
};

/// A parsed, fully validated header.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;              ///< in data order (ascending offsets)
  std::map<std::string, std::string> metadata;  ///< "__metadata__", empty when absent
  std::uint64_t data_start = 0;                 ///< file offset of the data buffer (8 + N)
};

/// Parses and validates the header of a complete safetensors file held in `file`. `file_name`
/// is only used in messages. Checks: header length within the file and the limit, valid UTF-8
/// JSON object, no duplicate names, known dtypes, shapes non-negative and without overflow,
/// byte counts equal to numel × dtype size, offsets in bounds, the data buffer tiled exactly
/// (contiguous, no overlap, no gap, no trailing bytes). Throws format_error naming the file,
/// the tensor and the rule broken.
SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file,
                                           std::string_view file_name);

/// A validated, memory-mapped safetensors file. Tensor data is read straight from the mapping.
class SafetensorsFile {
 public:
  /// Maps and validates `path`; throws io_error or format_error.
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const noexcept { return map_.path(); }
  const std::vector<TensorInfo>& tensors() const noexcept { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const noexcept { return header_.metadata; }
  std::uint64_t file_size() const noexcept { return map_.bytes().size(); }

  /// The entry for `name`, or nullptr.
  const TensorInfo* find(std::string_view name) const noexcept;
  /// The entry for `name`; throws format_error naming the file when absent.
  const TensorInfo& at(std::string_view name) const;
  /// The raw little-endian bytes of a tensor. Callers that read them call check_intact() after.
  std::span<const std::byte> bytes(const TensorInfo& t) const noexcept;
  /// Throws io_error naming the file when it shrank while its bytes were read (MappedFile).
  void check_intact() const { map_.check_intact(); }

  /// Reads a float tensor converted to f32 / f64; `out.size()` must equal numel (shape_error).
  void read(const TensorInfo& t, std::span<float> out) const;
  /// The same, converting on `threads` OpenMP threads (a whole tensor, outside other parallel work).
  void read(const TensorInfo& t, std::span<float> out, int threads) const;
  void read(const TensorInfo& t, std::span<double> out) const;
  /// Elements [first, first + out.size()) of a float tensor as f32 (shape_error past its end).
  void read_part(const TensorInfo& t, std::uint64_t first, std::span<float> out, int threads = 1) const;
  std::vector<float> read_f32(std::string_view name) const;
  /// Drops the tensor's pages from the process's resident set once it has been read
  /// (MappedFile::drop_pages); the data stays readable.
  void evict(const TensorInfo& t) const noexcept;
  /// Drops the pages from the first byte of either tensor to the last of either, in one call.
  void evict(const TensorInfo& a, const TensorInfo& b) const noexcept;
  /// Maps the tensor's bytes ahead of their use (MappedFile::prefetch).
  void prefetch(const TensorInfo& t) const noexcept;
  /// The whole pages inside elements [first, first + count) of a tensor.
  void evict_part(const TensorInfo& t, std::uint64_t first, std::uint64_t count) const noexcept;
  std::vector<double> read_f64(std::string_view name) const;

 private:
  MappedFile map_;
  SafetensorsHeader header_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

/// Name, dtype and shape of a tensor to be written.
struct TensorSpec {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;

  std::uint64_t nbytes() const;  ///< numel × dtype size, overflow-checked
};

/// Writes one safetensors file atomically. All tensors are declared up front so the header
/// carries final offsets; data may then be written tensor by tensor in any order (each exactly
/// once). Data is laid out by descending element size, then name, so every tensor is aligned to
/// its element size; the header is padded with spaces so the data buffer starts 8-byte aligned.
/// The file appears at `path` only on commit(); destroying an uncommitted writer removes its
/// temporary file. An existing `path` is refused unless `overwrite` is set.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::filesystem::path& path, std::vector<TensorSpec> specs,
                    const std::map<std::string, std::string>& metadata = {},
                    bool overwrite = false);
  /// Joins the file that a writer with the same specs and metadata is writing, under its
  /// writing_path() `writing` (a file shared by several processes, each writing its own
  /// tensors). The header already there must be the one these specs give. commit() then checks
  /// that the tensors this writer touched are whole and syncs them; the file's creator renames
  /// it into place, and nothing is removed here on failure.
  struct Join {};
  SafetensorsWriter(Join, const std::filesystem::path& writing, const std::filesystem::path& path,
                    std::vector<TensorSpec> specs, const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(SafetensorsWriter&&) noexcept;
  SafetensorsWriter& operator=(SafetensorsWriter&&) noexcept;

  /// Writes the whole data of tensor `name` (exactly its nbytes, in its dtype). Threads may
  /// write different tensors at once.
  void write(std::string_view name, std::span<const std::byte> data);
  /// Converts `values` (numel floats) to the tensor's dtype and writes them.
  void write_f32(std::string_view name, std::span<const float> values, int threads = 1);
  /// Part of a tensor: `data` at byte `offset` of its data, or `values` converted from element
  /// `first` on. A tensor may be written in parts, each byte exactly once (commit() checks the
  /// total; more bytes than the tensor holds is refused as written twice).
  void write_part(std::string_view name, std::uint64_t offset, std::span<const std::byte> data);
  void write_f32_part(std::string_view name, std::uint64_t first, std::span<const float> values,
                      int threads = 1);
  /// From now on write_f32 / write_f32_part return once their values are converted and queued:
  /// a thread of the writer's own writes them, from at most `bytes` of buffers (at least one
  /// part's), while the caller goes on. commit() waits for them; a failed write's error comes
  /// from the next write_f32_part or from commit(). Raw writes (write, write_part) stay in line.
  void write_behind(std::uint64_t bytes);
  /// The same, through `other`'s queue (its write_behind() called first): the shards of one
  /// model share one thread and one bound.
  void share_write_behind(const SafetensorsWriter& other);
  /// Counts tensor `name` as written by another writer of the same file (commit() does not
  /// ask for its bytes here).
  void written_elsewhere(std::string_view name);
  /// The tensors written here so far (any part of them), in the file's order.
  std::vector<std::string> written_names() const;
  /// Checks every tensor was written, syncs and renames into place.
  void commit();

  /// Total file size the writer will produce.
  std::uint64_t file_size() const noexcept;
  /// The name the file is written under until commit() (what other writers join).
  const std::filesystem::path& writing_path() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// A tensor with its data, for write_safetensors().
struct TensorData {
  TensorSpec spec;
  std::span<const std::byte> bytes;
};

/// Writes a complete file in one call (atomically, as SafetensorsWriter).
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata = {},
                       bool overwrite = false);

}  // namespace revmerge
