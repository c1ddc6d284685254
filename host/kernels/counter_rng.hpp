#pragma once
// The counter-based random numbers behind DARE's drop mask and the randomized SVD's sketch. A
// draw is a pure function of (seed, stream, index), so any thread, any device and any order
// draw the same numbers, and a user can reproduce them (docs/methods.md spells the arithmetic
// out; tools/make_golden.py implements it again in numpy).
#include <cmath>
#include <cstdint>
#include <string_view>

#include "kernels/host_device.hpp"

namespace revmerge::kernels {

/// SplitMix64's finaliser in place on `Words`: one unsigned 64-bit word, or (host) a GCC vector
/// of them, each lane mixed alike (by reference: a vector is never passed by value).
template <class Words>
REVMERGE_HD_INLINE void mix64_words(Words& z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z = z ^ (z >> 31);
}

/// SplitMix64's finaliser: a bijection of 64-bit words with full avalanche.
REVMERGE_HD inline std::uint64_t mix64(std::uint64_t z) {
  mix64_words(z);
  return z;
}

/// A uniform double in [0, 1) for element `index` of stream `stream` under `seed` (53 bits).
REVMERGE_HD inline double counter_uniform(std::uint64_t seed, std::uint64_t stream,
                                          std::uint64_t index) {
  const std::uint64_t key = mix64(seed ^ mix64(stream));
  return static_cast<double>(mix64(key ^ index) >> 11) * 0x1.0p-53;
}

/// The draws of a stream compared with a probability without forming the doubles:
/// counter_uniform(seed, stream, i) < p exactly when below(i) holds (the 53-bit integer under
/// ⌈p · 2⁵³⌉, a product exact in double).
struct CounterThreshold {
  std::uint64_t key;
  REVMERGE_HD CounterThreshold(std::uint64_t seed, std::uint64_t stream) : key(mix64(seed ^ mix64(stream))) {}
  REVMERGE_HD static std::uint64_t limit(double p) {
    return p <= 0 ? 0 : p >= 1 ? (std::uint64_t{1} << 53) : static_cast<std::uint64_t>(::ceil(p * 0x1.0p53));
  }
  REVMERGE_HD bool below(std::uint64_t index, std::uint64_t limit) const {
    return (mix64(key ^ index) >> 11) < limit;
  }
  /// below() of every lane of `index`, a GCC vector of unsigned 64-bit indices (host), into
  /// `keep`: a lane all ones where the draw is below, zero where not.
  template <class Words>
  [[gnu::always_inline]] void below_lanes(const Words& index, std::uint64_t limit, Words& keep) const {
    Words z = index ^ key;
    mix64_words(z);
    keep = reinterpret_cast<Words>((z >> 11) < limit);
  }
};

/// A standard normal number for (seed, stream, index): Box–Muller on two uniforms of the
/// stream, u1 kept away from 0. The randomized SVD's sketch, drawn alike on the host and on a
/// device (the global-namespace log / cos / sqrt are the CUDA math library's in device code).
REVMERGE_HD inline double counter_normal(std::uint64_t seed, std::uint64_t stream,
                                         std::uint64_t index) {
  const double u1 = counter_uniform(seed, stream, 2 * index) + 0x1.0p-54;
  const double u2 = counter_uniform(seed, stream, 2 * index + 1);
  return ::sqrt(-2.0 * ::log(u1)) * ::cos(6.283185307179586 * u2);
}

/// FNV-1a over a tensor's name: the stream id of a named tensor (host only).
inline std::uint64_t stream_id(std::string_view name) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace revmerge::kernels
