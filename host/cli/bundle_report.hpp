#pragma once
// What `merge` prints when it finishes and what `inspect` prints: a bundle's summary.
#include <cstddef>
#include <nlohmann/json.hpp>

#include "revmerge/bundle.hpp"

namespace revmerge::cli {

/// Per task over all modules: ‖B̂Â − BA‖ / ‖BA‖ with every module's delta stacked together.
std::vector<double> overall_delta_error(const BundleManifest& m);

/// Fraction of the spectrum's energy in the top `p` eigenvalues.
double retained_energy(const std::vector<double>& spectrum, std::int64_t p);

/// What a new bundle's user may not expect: tasks naming different base models; a bundle that
/// takes more bytes than the tasks' own factors.
std::vector<std::string> bundle_warnings(const BundleManifest& m);

/// Text report: header, per-task errors, spectrum summary, `top` worst modules.
void print_bundle_report(const BundleManifest& m, const std::string& where, std::size_t top);

/// The same as JSON: the summary plus the manifest.
nlohmann::ordered_json bundle_report_json(const BundleManifest& m, const std::string& where);

}  // namespace revmerge::cli
