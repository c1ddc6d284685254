#pragma once
// Helpers shared by the tests: scratch folders and hand-made safetensors bytes.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace revmerge::test {

/// A fresh folder under the system temp dir, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    static std::mt19937_64 rng(std::random_device{}());
    path_ = std::filesystem::temp_directory_path() /
            ("revmerge-test-" + std::to_string(rng()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

/// 8-byte length + `header` + `data`, as a safetensors file lays them out.
inline std::string safetensors_bytes(const std::string& header, const std::string& data,
                                     std::uint64_t claimed_length = UINT64_MAX) {
  const std::uint64_t n = claimed_length == UINT64_MAX ? header.size() : claimed_length;
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

inline void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

/// Names of the entries of a folder (for "nothing was left behind" checks).
inline std::vector<std::string> list_dir(const std::filesystem::path& p) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(p)) out.push_back(e.path().filename());
  std::sort(out.begin(), out.end());
  return out;
}

/// The exact byte count a too-small --memory-budget refusal names ("... (123456 bytes: staging").
inline std::uint64_t budget_bytes_named(const std::string& msg) {
  const auto at = msg.find(" bytes: staging");
  const auto open = msg.rfind('(', at);
  return std::stoull(msg.substr(open + 1, at - open - 1));
}

/// True when `python3 -c "<code>"` succeeds (used to skip cross-checks that need packages).
inline bool python_has(const std::string& modules) {
  const std::string cmd = "python3 -c 'import " + modules + "' >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

/// True where the Python peers must be there (REVMERGE_REQUIRE_PYTHON_PEERS=1, set by
/// tools/test.sh): a cross-check that cannot find them fails instead of skipping.
inline bool python_peers_required() {
  const char* v = std::getenv("REVMERGE_REQUIRE_PYTHON_PEERS");
  return v && std::string(v) == "1";
}

/// Skips the case when python3 cannot import `modules` — or fails it where they are required.
#define REVMERGE_PYTHON_OR_SKIP(modules)                                                         \
  do {                                                                                           \
    if (!::revmerge::test::python_has(modules)) {                                                \
      if (::revmerge::test::python_peers_required())                                             \
        GTEST_FAIL() << "python3 cannot import " << (modules)                                    \
                     << " (REVMERGE_REQUIRE_PYTHON_PEERS=1: tools/bootstrap.sh installs them)";  \
      GTEST_SKIP() << "python3 cannot import " << (modules);                                    \
    }                                                                                            \
  } while (0)

}  // namespace revmerge::test
