#pragma once
// Host-made values handed to a backend, for the store's products that run there, and results
// handed back: written and read in place where the backend's memory is the host's (the CPU: no
// copy, the same pointers the host code had), else through a staging vector.
#include <algorithm>
#include <cstddef>
#include <vector>

#include "backend/backend.hpp"

namespace revmerge {

/// `count` values made by fill(pointer) into `buffer` (backend memory, allocated if too
/// small). On a discrete device they are made in `staging` and uploaded on `st`: staging must
/// then outlive the upload (the caller waits for the stream before it changes or drops it).
template <class T, class Fill>
void fill_on_backend(Backend& be, Stream st, DeviceBuffer& buffer, std::size_t count, std::vector<T>& staging,
                     const Fill& fill) {
  const std::size_t bytes = std::max<std::size_t>(count, 1) * sizeof(T);
  if (buffer.bytes() < bytes) buffer = be.allocate(bytes);
  if (be.shares_host_memory()) return fill(static_cast<T*>(buffer.data()));
  staging.resize(count);
  fill(staging.data());
  be.upload(buffer.data(), staging.data(), count * sizeof(T), st);
}

/// A host vector's values in `buffer`, as fill_on_backend.
template <class T>
void copy_to_backend(Backend& be, Stream st, DeviceBuffer& buffer, const std::vector<T>& values,
                     std::vector<T>& staging) {
  fill_on_backend(be, st, buffer, values.size(), staging, [&](T* x) { std::copy(values.begin(), values.end(), x); });
}

/// `count` values of backend memory `buffer` for the host to read once it has synchronized `st`:
/// the buffer itself where the backend's memory is the host's (no copy), else a download into
/// `staging` queued on `st`.
template <class T>
const T* host_values(Backend& be, Stream st, DeviceBuffer& buffer, std::size_t count, std::vector<T>& staging) {
  if (be.shares_host_memory()) return static_cast<const T*>(buffer.data());
  staging.resize(count);
  be.download(staging.data(), buffer.data(), count * sizeof(T), st);
  return staging.data();
}

/// Backend memory for `count` doubles (at least one).
inline DeviceBuffer allocate_f64(Backend& be, std::size_t count) {
  return be.allocate(std::max<std::size_t>(count, 1) * sizeof(double));
}

inline double* f64(DeviceBuffer& b) { return static_cast<double*>(b.data()); }

}  // namespace revmerge
