// Any text as a merge config (YAML or JSON, revmerge's or mergekit's spelling). Task paths are
// resolved under a folder that does not exist, so the readers' existence checks refuse them.
#include <cstddef>
#include <cstdint>
#include <string>

#include "cli/merge_config.hpp"
#include "revmerge/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto configs = revmerge::cli::parse_merge_configs(
        std::string(reinterpret_cast<const char*>(data), size), "/nonexistent-fuzz-dir/merge.yml");
    for (const auto& c : configs)
      if (c.task_weights.size() != c.tasks.size() || c.task_densities.size() != c.tasks.size())
        __builtin_trap();
  } catch (const revmerge::format_error&) {
  } catch (const revmerge::unsupported_error&) {
  } catch (const revmerge::io_error&) {
  }
  return 0;
}
