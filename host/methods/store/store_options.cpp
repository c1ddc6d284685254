// The budgeted store's options as the command line and the C interface give them: --objective,
// --representations and --storage, each refused by the option's name with what it takes.
#include "revmerge/store.hpp"

#include <stdexcept>
#include <string>
#include <vector>

#include "core/memory_info.hpp"
#include "revmerge/error.hpp"

namespace revmerge {

StoreObjective parse_store_objective(const std::string& text, const std::string& option) {
  if (text == "mean") return StoreObjective::mean;
  if (text == "max") return StoreObjective::max;
  throw usage_error(option + ": '" + text + "' is not an objective (mean: the mean task error, max: the worst task's)");
}

std::vector<Representation> parse_representations(const std::string& text, const std::string& option) {
  std::vector<Representation> out;
  std::size_t at = 0;
  while (at <= text.size()) {
    const auto comma = text.find(',', at);
    const auto name = text.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    if (name == "rmm") out.push_back(Representation::rmm);
    else if (name == "rank") out.push_back(Representation::rank);
    else if (name == "shared_rows") out.push_back(Representation::shared_rows);
    else if (name == "shared") out.push_back(Representation::shared);
    else throw usage_error(option + ": '" + name + "' is not a representation (rmm, rank, shared_rows, shared)");
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

StorageBudget parse_storage_budget(const std::string& text, const std::string& option) {
  StorageBudget b;
  const auto bad = [&](const std::string& why) {
    return usage_error(option + " '" + text + "': " + why +
                       " (write a fraction of the adapters' numbers such as 0.25 or 25%, or a size "
                       "such as 2GiB)");
  };
  if (text.empty()) throw bad("empty");
  const bool percent = text.back() == '%';
  const auto number = percent ? text.substr(0, text.size() - 1) : text;
  const bool plain = !number.empty() && number.find_first_not_of("0123456789.") == std::string::npos;
  if (!plain) {
    b.bytes = parse_byte_size(text, option);
    return b;
  }
  double v = 0;
  try {
    std::size_t used = 0;
    v = std::stod(number, &used);
    if (used != number.size()) throw bad("not a number");
  } catch (const std::logic_error&) {
    throw bad("not a number");
  }
  if (percent) v /= 100;
  if (!(v > 0 && v <= 1))
    throw bad(v > 1 ? "a fraction above 1 (storing every task exactly costs 1; a size needs a unit)"
                    : "not above 0");
  b.fraction = v;
  return b;
}

}  // namespace revmerge
