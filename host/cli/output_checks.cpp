#include "output_checks.hpp"

#include <string>
#include <system_error>

#include "core/atomic_output.hpp"
#include "text_format.hpp"

namespace fs = std::filesystem;

namespace revmerge::cli {
namespace {

std::uint64_t bytes_under(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_directory(fs::symlink_status(p, ec))) {
    const auto n = fs::file_size(p, ec);
    return ec ? 0 : n;
  }
  std::uint64_t total = 0;
  for (fs::recursive_directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec))
    if (it->is_regular_file(ec)) {
      const auto n = it->file_size(ec);
      if (!ec) total += n;
    }
  return total;
}

}  // namespace

void warn_of_leftovers(const fs::path& out) {
  for (const auto& left : temporaries_beside(out))
    print_warning(out.string() + ": " + left.string() + " (" + human_bytes(bytes_under(left)) +
                  ") was left by a revmerge run that was killed before it could clean up, or is being "
                  "written by one still running; delete it once no revmerge writes " + out.string());
}

}  // namespace revmerge::cli
