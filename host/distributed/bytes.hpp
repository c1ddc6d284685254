#pragma once
// Values as bytes and back, exactly (host byte order): what the workers of one merge exchange
// through all_gather — the same machine type on every rank.
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "revmerge/error.hpp"

namespace revmerge {

class ByteWriter {
 public:
  template <class T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    bytes_.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void put_string(const std::string& s) {
    put<std::uint64_t>(s.size());
    bytes_ += s;
  }
  template <class T>
  void put_values(const std::vector<T>& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    put<std::uint64_t>(v.size());
    if (!v.empty()) bytes_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  void put_doubles(const std::vector<double>& v) { put_values(v); }
  std::string& bytes() { return bytes_; }

 private:
  std::string bytes_;
};

/// Reads what a ByteWriter wrote; `what` names the data in the error for bytes that end early.
class ByteReader {
 public:
  ByteReader(const std::string& bytes, std::string what) : in_(bytes), what_(std::move(what)) {}
  bool done() const { return at_ == in_.size(); }
  template <class T>
  T get() {
    T v;
    std::memcpy(&v, take(sizeof v), sizeof v);
    return v;
  }
  std::string get_string() {
    const auto n = get<std::uint64_t>();
    return std::string(take(n), n);
  }
  template <class T>
  std::vector<T> get_values() {
    const auto n = get<std::uint64_t>();
    if (n > (in_.size() - at_) / sizeof(T)) throw error(what_ + " ended early");
    std::vector<T> v(n);
    if (n > 0) std::memcpy(v.data(), take(n * sizeof(T)), n * sizeof(T));  // an empty one's data() may be null
    return v;
  }
  std::vector<double> get_doubles() { return get_values<double>(); }

 private:
  const char* take(std::uint64_t n) {
    if (in_.size() - at_ < n) throw error(what_ + " ended early");
    const char* p = in_.data() + at_;
    at_ += n;
    return p;
  }
  const std::string& in_;
  std::string what_;
  std::size_t at_ = 0;
};

}  // namespace revmerge
