// Any text as model.safetensors.index.json.
#include <cstddef>
#include <cstdint>
#include <string>

#include "revmerge/checkpoint.hpp"
#include "revmerge/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto index = revmerge::parse_shard_index(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz.index.json");
    for (const auto& [name, shard] : index.weight_map)
      if (shard.find('/') != std::string::npos) __builtin_trap();  // never leaves the folder
  } catch (const revmerge::format_error&) {
  }
  return 0;
}
