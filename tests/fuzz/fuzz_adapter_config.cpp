// Any text as adapter_config.json, then the pattern rules on a few module paths.
#include <cstddef>
#include <cstdint>
#include <string>

#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto c = revmerge::parse_lora_config(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz/adapter_config.json");
    for (const char* path : {"model.layers.0.self_attn.q_proj", "model.layers.11.mlp.up_proj", "x"}) {
      if (c.rank_for(path) <= 0) __builtin_trap();
      (void)c.scale_for(path);
      (void)c.targets(path);
    }
  } catch (const revmerge::format_error&) {
  } catch (const revmerge::unsupported_error&) {
  }
  return 0;
}
