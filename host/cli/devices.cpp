// `revmerge devices`: the backends this build has and the GPUs visible now.
#include <fmt/format.h>
#include <fmt/ostream.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "backend/blas_core.hpp"
#include "commands.hpp"
#include "revmerge/devices.hpp"
#include "text_format.hpp"
#include "command_line.hpp"

namespace revmerge::cli {

void add_devices_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("devices", "List compute backends and visible GPUs");
  static bool as_json = false;
  as_json = false;  // each command line starts from the defaults
  cmd->add_flag("--json", as_json, "print JSON instead of text");
  cmd->callback([] {
    const auto r = probe_devices();
    if (as_json) {
      nlohmann::ordered_json j;
      j["backends"] = r.cuda_built ? nlohmann::ordered_json{"cpu", "cuda"}
                                   : nlohmann::ordered_json{"cpu"};
      j["gpus"] = nlohmann::ordered_json::array();
      for (const auto& g : r.gpus)
        j["gpus"].push_back({{"index", g.index}, {"name", g.name}, {"memory_bytes", g.memory_bytes},
                             {"compute_capability", fmt::format("{}.{}", g.compute_major, g.compute_minor)},
                             {"has_kernels", g.has_kernels}});
      if (r.cuda_built) j["cuda_kernels"] = r.kernels;
      if (r.gpus.empty()) j["why_no_gpu"] = r.why_no_gpu;
      j["blas_kernels"] = blas_core_name();
      report_out() << j.dump(2) << "\n";
      return;
    }
    fmt::print(report_out(), "backends: cpu{}\n", r.cuda_built ? ", cuda" : "");
    fmt::print(report_out(), "cpu: OpenBLAS {} kernels{}\n", blas_core_name(),
               std::getenv("REVMERGE_BLAS_RESTARTED") ? " (chosen by revmerge: OpenBLAS picked generic ones)" : "");
    if (r.gpus.empty()) fmt::print(report_out(), "gpus: none ({})\n", r.why_no_gpu);
    for (const auto& g : r.gpus)
      fmt::print(report_out(), "gpu {}: {} ({}, sm_{}{}){}\n", g.index, g.name, human_bytes(g.memory_bytes),
                 g.compute_major, g.compute_minor,
                 g.has_kernels ? "" : " — no kernels in this build for it, not used");
    if (r.cuda_built) fmt::print(report_out(), "cuda kernels: {}\n", r.kernels);
  });
}

}  // namespace revmerge::cli
