#pragma once
// A bundle task's rebuilt modules written as a PEFT adapter folder (lora_alpha = r, the scale
// folded into B, the recipe beside it): what `revert` and a resident bundle's save_adapter write.
#include <cstdint>
#include <filesystem>
#include <vector>

#include "revmerge/bundle.hpp"
#include "revmerge/peft.hpp"
#include "revmerge/rmm.hpp"

namespace revmerge {

/// Task `task` of the bundle at `bundle_dir` (manifest `man`), whose modules are `modules`.
void write_task_adapter(const BundleManifest& man, const std::filesystem::path& bundle_dir, std::int64_t task,
                        const std::vector<LoraModuleData>& modules, const std::filesystem::path& out,
                        const RevertOptions& options);

/// The index of the task named `name`; usage_error naming `option`, the bundle and its tasks
/// otherwise.
std::int64_t require_task(const BundleManifest& man, const std::filesystem::path& bundle_dir,
                          const std::string& name, const std::string& option = "--task");

}  // namespace revmerge
