#include <algorithm>
#include <atomic>
#include <deque>
#include <fstream>
#include <unordered_map>
#include <cstring>
#include <nlohmann/json.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/atomic_output.hpp"
#include "core/checked_math.hpp"
#include "core/write_queue.hpp"
#include "revmerge/error.hpp"
#include "revmerge/safetensors.hpp"

namespace revmerge {

std::uint64_t TensorSpec::nbytes() const {
  const auto numel = detail::checked_numel(shape);
  const auto bytes = numel ? detail::checked_mul(*numel, dtype_size(dtype)) : std::nullopt;
  if (!bytes) throw shape_error("tensor '" + name + "': shape is negative or its size overflows");
  return *bytes;
}

struct SafetensorsWriter::Impl {
  struct Slot {
    TensorSpec spec;
    std::uint64_t begin = 0;
    std::atomic<std::uint64_t> written = 0;  // bytes; several threads may write at once
    std::atomic<bool> touched = false;        // any write, empty tensors included
    Slot(TensorSpec s, std::uint64_t b) : spec(std::move(s)), begin(b) {}
  };
  std::optional<AtomicFile> file;
  std::deque<Slot> slots;  // in data order
  std::unordered_map<std::string_view, Slot*> by_name;  // keys view the slots' names
  std::uint64_t data_start = 0;
  std::uint64_t size = 0;
  bool joined = false;  // one of several writers of the file: answers for its own tensors only
  // Converted parts written behind the caller (write_behind); shared by a model's shards.
  std::shared_ptr<WriteQueue> queue;

  // Nothing queued may still be writing to `file` when it closes (and removes its temporary).
  ~Impl() {
    if (queue) queue->wait();
  }

  std::string lay_out(const std::filesystem::path& path, std::vector<TensorSpec> specs,
                      const std::map<std::string, std::string>& metadata);

  // Checks and counts a write of `size` bytes at byte `offset` of tensor `name`'s data;
  // returns where in the file they go.
  std::uint64_t claim(std::string_view name, std::uint64_t offset, std::size_t size);

  Slot& slot(std::string_view name) {
    const auto it = by_name.find(name);
    if (it == by_name.end())
      throw usage_error(file->target().string() + ": tensor '" + std::string(name) +
                        "' was not declared");
    return *it->second;
  }
};

// Declares `specs` in `impl` and returns the file's header (length prefix excluded), padded so
// the data buffer starts 8-byte aligned.
std::string SafetensorsWriter::Impl::lay_out(const std::filesystem::path& path, std::vector<TensorSpec> specs,
                                             const std::map<std::string, std::string>& metadata) {
  auto& impl = *this;
  // Larger elements first keeps every tensor aligned to its element size without padding
  // inside the data buffer (which the format forbids).
  std::sort(specs.begin(), specs.end(), [](const TensorSpec& a, const TensorSpec& b) {
    const auto sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (auto& spec : specs) {
    if (spec.name.empty() || spec.name == "__metadata__")
      throw usage_error(path.string() + ": invalid tensor name '" + spec.name + "'");
    if (header.contains(spec.name))
      throw usage_error(path.string() + ": tensor '" + spec.name + "' declared twice");
    const auto bytes = spec.nbytes();
    header[spec.name] = {{"dtype", dtype_name(spec.dtype)},
                         {"shape", spec.shape},
                         {"data_offsets", {offset, offset + bytes}}};
    impl.slots.emplace_back(std::move(spec), offset);
    impl.by_name.emplace(impl.slots.back().spec.name, &impl.slots.back());
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');  // data buffer starts 8-byte aligned
  impl.data_start = 8 + text.size();
  impl.size = impl.data_start + offset;
  return text;
}

SafetensorsWriter::SafetensorsWriter(const std::filesystem::path& path,
                                     std::vector<TensorSpec> specs,
                                     const std::map<std::string, std::string>& metadata,
                                     bool overwrite)
    : impl_(std::make_unique<Impl>()) {
  const auto text = impl_->lay_out(path, std::move(specs), metadata);
  impl_->file.emplace(path, overwrite);
  const std::uint64_t n = text.size();
  impl_->file->write_at(0, &n, 8);
  impl_->file->write_at(8, text.data(), text.size());
  impl_->file->resize(impl_->size);
}

SafetensorsWriter::SafetensorsWriter(Join, const std::filesystem::path& writing, const std::filesystem::path& path,
                                     std::vector<TensorSpec> specs,
                                     const std::map<std::string, std::string>& metadata)
    : impl_(std::make_unique<Impl>()) {
  const auto text = impl_->lay_out(path, std::move(specs), metadata);
  // The file's own header must be these specs' (another layout would put our bytes into
  // someone else's tensors).
  std::string there(8 + text.size(), '\0');
  std::ifstream in(writing, std::ios::binary);
  in.read(there.data(), static_cast<std::streamsize>(there.size()));
  std::uint64_t n = 0;
  std::memcpy(&n, there.data(), 8);
  if (!in || n != text.size() || there.compare(8, text.size(), text) != 0 ||
      std::filesystem::file_size(writing) != impl_->size)
    throw usage_error(writing.string() + ": the output being written was laid out for other tensors "
                      "than this writer's (every writer of a shared file must declare the same ones)");
  impl_->file.emplace(AtomicFile::Join::existing, writing, path);
  impl_->joined = true;
}

SafetensorsWriter::~SafetensorsWriter() = default;
SafetensorsWriter::SafetensorsWriter(SafetensorsWriter&&) noexcept = default;
SafetensorsWriter& SafetensorsWriter::operator=(SafetensorsWriter&&) noexcept = default;

void SafetensorsWriter::write(std::string_view name, std::span<const std::byte> data) {
  const auto& s = impl_->slot(name);
  if (data.size() != s.spec.nbytes())
    throw shape_error(impl_->file->target().string() + ": tensor '" + std::string(name) + "' expects " +
                      std::to_string(s.spec.nbytes()) + " bytes, got " + std::to_string(data.size()));
  write_part(name, 0, data);
}

std::uint64_t SafetensorsWriter::Impl::claim(std::string_view name, std::uint64_t offset, std::size_t size) {
  auto& s = slot(name);
  const auto& target = file->target();
  const auto nbytes = s.spec.nbytes();
  if (offset > nbytes || size > nbytes - offset)
    throw shape_error(target.string() + ": tensor '" + std::string(name) + "' holds " +
                      std::to_string(nbytes) + " bytes; a write of " + std::to_string(size) +
                      " at byte " + std::to_string(offset) + " goes past its end");
  // Parts never overlap when every byte is written once: more bytes than the tensor holds means
  // some were written twice.
  const bool again = nbytes == 0 ? s.touched.exchange(true) : s.written.fetch_add(size) + size > nbytes;
  s.touched = true;
  if (again)
    throw usage_error(target.string() + ": tensor '" + std::string(name) + "' written twice");
  return data_start + s.begin + offset;
}

void SafetensorsWriter::write_part(std::string_view name, std::uint64_t offset,
                                   std::span<const std::byte> data) {
  impl_->file->write_at(impl_->claim(name, offset, data.size()), data.data(), data.size());
}

void SafetensorsWriter::write_behind(std::uint64_t bytes) {
  if (!impl_->queue) impl_->queue = std::make_shared<WriteQueue>(bytes);
}

void SafetensorsWriter::share_write_behind(const SafetensorsWriter& other) { impl_->queue = other.impl_->queue; }

void SafetensorsWriter::write_f32(std::string_view name, std::span<const float> values, int threads) {
  const auto& s = impl_->slot(name);
  const auto numel = s.spec.nbytes() / dtype_size(s.spec.dtype);
  if (values.size() != numel)
    throw shape_error(impl_->file->target().string() + ": tensor '" + std::string(name) + "' has " +
                      std::to_string(numel) + " elements, got " + std::to_string(values.size()));
  write_f32_part(name, 0, values, threads);
}

void SafetensorsWriter::write_f32_part(std::string_view name, std::uint64_t first,
                                       std::span<const float> values, int threads) {
  const auto& s = impl_->slot(name);
  const auto size = dtype_size(s.spec.dtype);
  // Written in parts of 1 Mi elements, each converted and written while it is in cache (a
  // 90 MB tensor in one pwrite of values converted long before ran at ~0.4 GB/s here); what
  // goes through the page cache starts its writeback (AtomicFile::write_at) before the next
  // part piles up dirty pages.
  constexpr std::size_t kPart = std::size_t{1} << 20;
  // Each part starts at its file offset's place in an aligned block, so that AtomicFile can
  // write its whole blocks around the page cache (f32 parts are copied there too: the caller's
  // buffer has no such alignment).
  constexpr std::size_t kAlign = AtomicFile::kDirectAlign;
  std::byte* aligned = nullptr;
  if (!impl_->queue) {
    // In line: one conversion buffer per thread, kept: a fresh one per part would be fresh pages
    // (a fault and a zeroing per 4 KiB) for every tensor written. Not zero-filled: the
    // conversion writes every byte.
    thread_local std::unique_ptr<std::byte[]> storage;
    thread_local std::size_t capacity = 0;
    const std::size_t need = std::min(values.size(), kPart) * size + 2 * kAlign;
    if (need > capacity) {
      storage.reset(new std::byte[need]);
      capacity = need;
    }
    void* start = storage.get();
    std::size_t room = capacity;
    aligned = static_cast<std::byte*>(std::align(kAlign, capacity - kAlign, start, room));
  }
  std::size_t at = 0;
  do {  // once for an empty tensor too: the writer counts it written
    const auto part = values.subspan(at, std::min(kPart, values.size() - at));
    const auto bytes = part.size() * size;
    const auto where = impl_->claim(name, (first + at) * size, bytes);
    const auto shift = AtomicFile::direct_shift(where);
    if (impl_->queue) {  // written behind: converted into a block of the queue, left to its thread
      auto block = impl_->queue->take(bytes + kAlign);
      convert_from_f32(part.data(), s.spec.dtype, block.data() + shift, part.size(), threads);
      impl_->queue->write(std::move(block), *impl_->file, where, shift, bytes);
    } else {
      convert_from_f32(part.data(), s.spec.dtype, aligned + shift, part.size(), threads);
      impl_->file->write_at(where, aligned + shift, bytes);
    }
    at += part.size();
  } while (at < values.size());
}

void SafetensorsWriter::written_elsewhere(std::string_view name) {
  auto& s = impl_->slot(name);
  if (s.touched.exchange(true) || s.written.exchange(s.spec.nbytes()) != 0)
    throw usage_error(impl_->file->target().string() + ": tensor '" + std::string(name) +
                      "' written here and by another writer");
}

std::vector<std::string> SafetensorsWriter::written_names() const {
  std::vector<std::string> names;
  for (const auto& s : impl_->slots)
    if (s.touched) names.push_back(s.spec.name);
  return names;
}

void SafetensorsWriter::commit() {
  if (impl_->queue) impl_->queue->drain();
  for (const auto& s : impl_->slots)
    if ((!s.touched && !impl_->joined) || (s.touched && s.written != s.spec.nbytes()))
      throw usage_error(impl_->file->target().string() + ": tensor '" + s.spec.name + "' was declared but " +
                        (s.touched ? "only partly written" : "never written"));
  impl_->file->commit();
}

std::uint64_t SafetensorsWriter::file_size() const noexcept { return impl_->size; }

const std::filesystem::path& SafetensorsWriter::writing_path() const noexcept { return impl_->file->temp(); }

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata, bool overwrite) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& t : tensors) specs.push_back(t.spec);
  SafetensorsWriter w(path, std::move(specs), metadata, overwrite);
  for (const auto& t : tensors) w.write(t.spec.name, t.bytes);
  w.commit();
}

}  // namespace revmerge
