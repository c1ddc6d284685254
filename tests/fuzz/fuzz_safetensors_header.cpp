// Any bytes as a whole safetensors file: the header parser accepts or throws format_error.
#include <cstddef>
#include <cstdint>
#include <span>

#include "revmerge/error.hpp"
#include "revmerge/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto h = revmerge::parse_safetensors_header(
        std::as_bytes(std::span(data, size)), "fuzz.safetensors");
    // Accepted headers keep their promises: every tensor lies inside the file.
    for (const auto& t : h.tensors)
      if (h.data_start + t.end > size || t.begin > t.end) __builtin_trap();
  } catch (const revmerge::format_error&) {
  }
  return 0;
}
