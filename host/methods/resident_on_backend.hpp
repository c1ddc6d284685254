#pragma once
// A resident bundle on a backend the caller made: the seam the tests use to run the device path
// of ResidentBundle (pinned tables, uploads, events) on the deferred backend, which behaves like
// a GPU on any machine.
#include <filesystem>
#include <memory>

#include "backend/backend.hpp"
#include "revmerge/resident.hpp"

namespace revmerge {

/// Bundle folder `dir` opened onto `backend` (its tensors uploaded there), as the public
/// constructor opens it onto the backend it makes. Throws what that constructor throws.
std::unique_ptr<ResidentBundle> open_resident_on(const std::filesystem::path& dir, std::shared_ptr<Backend> backend);

}  // namespace revmerge
