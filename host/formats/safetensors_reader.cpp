#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/checked_math.hpp"
#include "core/json_file.hpp"
#include "revmerge/error.hpp"
#include "revmerge/safetensors.hpp"

namespace revmerge {
namespace {

using nlohmann::json;

// Deeper nesting than a header ever needs is refused while parsing, before it costs anything.
constexpr int kMaxJsonDepth = 8;

[[noreturn]] void fail(std::string_view file, const std::string& what) {
  throw format_error(std::string(file) + ": " + what);
}

[[noreturn]] void fail_tensor(std::string_view file, std::string_view tensor,
                              const std::string& what) {
  throw format_error(std::string(file) + ": tensor '" + std::string(tensor) + "': " + what);
}

std::uint64_t read_offset(const json& v, std::string_view file, std::string_view name) {
  if (!v.is_number_unsigned())
    fail_tensor(file, name, "data_offsets must be two non-negative integers");
  return v.get<std::uint64_t>();
}

TensorInfo parse_entry(const std::string& name, const json& entry, std::string_view file) {
  if (!entry.is_object()) fail_tensor(file, name, "entry is not a JSON object");
  for (const auto& [key, _] : entry.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      fail_tensor(file, name, "unknown field '" + key + "'");
  TensorInfo t;
  t.name = name;

  const auto dt = entry.find("dtype");
  if (dt == entry.end() || !dt->is_string()) fail_tensor(file, name, "missing string 'dtype'");
  const auto parsed = parse_dtype(dt->get<std::string>());
  if (!parsed) fail_tensor(file, name, "unknown dtype '" + dt->get<std::string>() + "'");
  t.dtype = *parsed;

  const auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array()) fail_tensor(file, name, "missing array 'shape'");
  if (shape->size() > kMaxTensorRank)
    fail_tensor(file, name, "shape has " + std::to_string(shape->size()) + " dimensions (max " +
                                std::to_string(kMaxTensorRank) + ")");
  for (const auto& d : *shape) {
    if (!d.is_number_unsigned() || d.get<std::uint64_t>() > std::uint64_t(INT64_MAX))
      fail_tensor(file, name, "shape entries must be non-negative integers");
    t.shape.push_back(static_cast<std::int64_t>(d.get<std::uint64_t>()));
  }

  const auto offs = entry.find("data_offsets");
  if (offs == entry.end() || !offs->is_array() || offs->size() != 2)
    fail_tensor(file, name, "data_offsets must be [begin, end]");
  t.begin = read_offset((*offs)[0], file, name);
  t.end = read_offset((*offs)[1], file, name);
  if (t.end < t.begin)
    fail_tensor(file, name, "data_offsets end " + std::to_string(t.end) + " is before begin " +
                                std::to_string(t.begin));

  const auto numel = detail::checked_numel(t.shape);
  const auto bytes = numel ? detail::checked_mul(*numel, dtype_size(t.dtype)) : std::nullopt;
  if (!bytes) fail_tensor(file, name, "shape size overflows");
  if (*bytes != t.nbytes())
    fail_tensor(file, name, "shape × dtype size is " + std::to_string(*bytes) +
                                " bytes but data_offsets span " + std::to_string(t.nbytes()));
  return t;
}

}  // namespace

std::uint64_t TensorInfo::numel() const noexcept {
  return detail::checked_numel(shape).value_or(0);
}

SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file,
                                           std::string_view file_name) {
  if (file.size() < 8)
    fail(file_name, "file is " + std::to_string(file.size()) +
                        " bytes, shorter than the 8-byte header length (truncated?)");
  std::uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);  // little-endian, checked in dtype.cpp
  if (n > kMaxSafetensorsHeaderBytes)
    fail(file_name, "header length " + std::to_string(n) + " exceeds the limit of " +
                        std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  if (n > file.size() - 8)
    fail(file_name, "header length " + std::to_string(n) + " runs past the end of the " +
                        std::to_string(file.size()) + "-byte file (truncated?)");
  if (n < 2 || static_cast<char>(file[8]) != '{')
    fail(file_name, "header does not start with a JSON object ('{')");

  const std::string_view text(reinterpret_cast<const char*>(file.data() + 8), n);
  // +1: __metadata__ is not a tensor.
  const json header = parse_json_text(text, file_name, kMaxJsonDepth, kMaxSafetensorsTensors + 1);
  if (!header.is_object()) fail(file_name, "header is not a JSON object");

  SafetensorsHeader out;
  out.data_start = 8 + n;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail(file_name, "__metadata__ is not a JSON object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) fail(file_name, "__metadata__ value '" + mk + "' is not a string");
        out.metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    out.tensors.push_back(parse_entry(key, value, file_name));
  }

  // The data buffer must be tiled exactly: sorted by offset, each tensor starts where the
  // previous one ended, the last ends at the end of the file.
  const std::uint64_t data_len = file.size() - out.data_start;
  std::sort(out.tensors.begin(), out.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t expected = 0;
  for (const auto& t : out.tensors) {
    if (t.end > data_len)
      fail_tensor(file_name, t.name,
                  "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                      ") run past the " + std::to_string(data_len) +
                      "-byte data buffer (truncated file?)");
    if (t.begin < expected)
      fail_tensor(file_name, t.name,
                  "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                      ") overlap the previous tensor, which ends at " + std::to_string(expected));
    if (t.begin > expected)
      fail_tensor(file_name, t.name,
                  "data is not contiguous: gap of " + std::to_string(t.begin - expected) +
                      " bytes before it");
    expected = t.end;
  }
  if (expected != data_len)
    fail(file_name, "file length is inconsistent: tensors cover " + std::to_string(expected) +
                        " bytes of a " + std::to_string(data_len) + "-byte data buffer");
  return out;
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : map_(path), header_(parse_safetensors_header(map_.bytes(), path.string())) {
  map_.check_intact();
  for (std::size_t i = 0; i < header_.tensors.size(); ++i)
    index_.emplace(header_.tensors[i].name, i);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const noexcept {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const TensorInfo& SafetensorsFile::at(std::string_view name) const {
  if (const auto* t = find(name)) return *t;
  throw format_error(path().string() + ": no tensor named '" + std::string(name) + "'");
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo& t) const noexcept {
  return map_.bytes().subspan(header_.data_start + t.begin, t.nbytes());
}

namespace {
template <class T>
void read_into(const SafetensorsFile& f, const TensorInfo& t, std::uint64_t first, std::span<T> out,
               int threads = 1) {
  if (first > t.numel() || out.size() > t.numel() - first)
    throw shape_error(f.path().string() + ": tensor '" + t.name + "' has " +
                      std::to_string(t.numel()) + " elements, caller expected " +
                      (first == 0 ? std::to_string(out.size())
                                  : std::to_string(out.size()) + " from element " + std::to_string(first)));
  if (!is_float_dtype(t.dtype))
    throw unsupported_error(f.path().string() + ": tensor '" + t.name + "' has dtype " +
                            std::string(dtype_name(t.dtype)) +
                            "; revmerge computes on F64, F32, F16 and BF16");
  const auto* src = f.bytes(t).data() + first * dtype_size(t.dtype);
  if constexpr (std::is_same_v<T, float>)
    convert_to_f32(t.dtype, src, out.data(), out.size(), threads);
  else
    convert_to_f64(t.dtype, src, out.data(), out.size());
  f.check_intact();
}

template <class T>
void read_whole(const SafetensorsFile& f, const TensorInfo& t, std::span<T> out, int threads = 1) {
  if (out.size() != t.numel())
    throw shape_error(f.path().string() + ": tensor '" + t.name + "' has " +
                      std::to_string(t.numel()) + " elements, caller expected " +
                      std::to_string(out.size()));
  read_into(f, t, 0, out, threads);
}
}  // namespace

void SafetensorsFile::read(const TensorInfo& t, std::span<float> out) const {
  read_whole(*this, t, out);
}
void SafetensorsFile::read(const TensorInfo& t, std::span<float> out, int threads) const {
  read_whole(*this, t, out, threads);
}
void SafetensorsFile::read(const TensorInfo& t, std::span<double> out) const {
  read_whole(*this, t, out);
}
void SafetensorsFile::read_part(const TensorInfo& t, std::uint64_t first, std::span<float> out,
                                int threads) const {
  read_into(*this, t, first, out, threads);
}

void SafetensorsFile::evict(const TensorInfo& t) const noexcept {
  map_.drop_pages(static_cast<std::size_t>(header_.data_start + t.begin),
                  static_cast<std::size_t>(t.end - t.begin));
}

void SafetensorsFile::prefetch(const TensorInfo& t) const noexcept {
  map_.prefetch(static_cast<std::size_t>(header_.data_start + t.begin), static_cast<std::size_t>(t.end - t.begin));
}

void SafetensorsFile::evict_part(const TensorInfo& t, std::uint64_t first, std::uint64_t count) const noexcept {
  const auto size = dtype_size(t.dtype);
  map_.drop_pages(static_cast<std::size_t>(header_.data_start + t.begin + first * size),
                  static_cast<std::size_t>(count * size));
}

void SafetensorsFile::evict(const TensorInfo& a, const TensorInfo& b) const noexcept {
  const auto begin = std::min(a.begin, b.begin), end = std::max(a.end, b.end);
  map_.drop_pages(static_cast<std::size_t>(header_.data_start + begin),
                  static_cast<std::size_t>(end - begin));
}

std::vector<float> SafetensorsFile::read_f32(std::string_view name) const {
  const auto& t = at(name);
  std::vector<float> out(t.numel());
  read(t, std::span<float>(out));
  return out;
}

std::vector<double> SafetensorsFile::read_f64(std::string_view name) const {
  const auto& t = at(name);
  std::vector<double> out(t.numel());
  read(t, std::span<double>(out));
  return out;
}

}  // namespace revmerge
