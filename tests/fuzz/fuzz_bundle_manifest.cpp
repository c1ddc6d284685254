// Any text as a bundle's manifest.json.
#include <cstddef>
#include <cstdint>
#include <string>

#include "revmerge/bundle.hpp"
#include "revmerge/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto m = revmerge::parse_manifest(std::string(reinterpret_cast<const char*>(data), size),
                                            "fuzz/manifest.json");
    // Accepted manifests are self-consistent: per-task lists match the task count.
    for (const auto& mod : m.modules)
      if (mod.delta_error.size() != m.tasks.size()) __builtin_trap();
    (void)revmerge::manifest_to_json(m);
  } catch (const revmerge::format_error&) {
  } catch (const revmerge::unsupported_error&) {
  }
  return 0;
}
