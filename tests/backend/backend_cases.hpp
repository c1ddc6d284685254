#pragma once
// Backend-parameterised tests: each case names a backend; where it cannot run here the case
// is skipped with the reason (ctest reports it as skipped). "deferred" is the CPU's arithmetic
// behaving like a discrete, asynchronous device (deferred_backend.hpp): the device code paths,
// and their waits, tested on every machine.
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "backend/deferred_backend.hpp"
#include "backend/registry.hpp"

namespace revmerge::test {

inline std::vector<std::string> all_backend_names() { return {"cpu", "deferred", "cuda"}; }

/// The named backend, or nullptr after GTEST_SKIP-ing with the reason.
inline std::unique_ptr<Backend> backend_or_skip(const std::string& name, int threads = 2) {
  if (name == "cuda") {
    const auto why = cuda_unavailable_reason();
    if (!why.empty()) return nullptr;
    return make_backend(Device::cuda, {threads, 0});
  }
  if (name == "deferred") return make_deferred_backend(threads);
  return make_backend(Device::cpu, {threads, 0});
}

/// True where a GPU must be there (REVMERGE_REQUIRE_GPU=1, set by tools/gpu-check.sh): a GPU
/// check whose cases all skipped would prove nothing, so there a missing GPU fails them.
inline bool gpu_required() {
  const char* v = std::getenv("REVMERGE_REQUIRE_GPU");
  return v && std::string(v) == "1";
}

/// Skips the case with the reason there is no GPU — or fails it where one is required.
#define REVMERGE_SKIP_WITHOUT_GPU(why)                                                         \
  do {                                                                                         \
    if (::revmerge::test::gpu_required())                                                      \
      GTEST_FAIL() << "REVMERGE_REQUIRE_GPU=1 but the CUDA backend is unavailable: " << (why); \
    GTEST_SKIP() << "CUDA backend unavailable: " << (why);                                     \
  } while (0)

#define REVMERGE_BACKEND_OR_SKIP(var, name)                    \
  auto var = ::revmerge::test::backend_or_skip(name);           \
  if (!var) REVMERGE_SKIP_WITHOUT_GPU(::revmerge::cuda_unavailable_reason())

/// Copies host data to a new backend buffer.
template <class T>
DeviceBuffer to_device(Backend& be, const std::vector<T>& v) {
  auto b = be.allocate(v.size() * sizeof(T));
  be.upload(b.data(), v.data(), v.size() * sizeof(T), {});
  return b;
}

/// The first `count` values of a backend buffer, once all work before has finished.
template <class T = float>
std::vector<T> to_host(Backend& be, const DeviceBuffer& b, std::size_t count) {
  std::vector<T> v(count);
  be.download(v.data(), b.data(), count * sizeof(T), {});
  be.synchronize({});
  return v;
}

}  // namespace revmerge::test
