#pragma once
// Small arrays of statistics on a backend, as the element-wise merges' drivers keep them: made
// zeroed on a stream, read as a type, brought back to the host at the end of a pass.
#include <algorithm>
#include <cstddef>
#include <vector>

#include "backend/backend.hpp"

namespace revmerge::backend_arrays {

/// `bytes` (at least 8) of backend memory set to `value` on `s`.
inline DeviceBuffer filled(Backend& b, std::size_t bytes, unsigned char value, Stream s) {
  DeviceBuffer d = b.allocate(std::max<std::size_t>(bytes, 8));
  b.fill(d.data(), value, std::max<std::size_t>(bytes, 8), s);
  return d;
}

template <class T>
T* as(const DeviceBuffer& d) {
  return static_cast<T*>(d.data());
}

/// Downloads `out.size()` 64-bit words (i64, u64 or double) into `out`, waiting for them.
template <class T>
void fetch(Backend& b, Stream s, const DeviceBuffer& d, std::vector<T>& out) {
  if (out.empty()) return;
  b.download(out.data(), d.data(), out.size() * sizeof(T), s);
  b.synchronize(s);
}

}  // namespace revmerge::backend_arrays
