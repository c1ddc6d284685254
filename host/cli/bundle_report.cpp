#include "bundle_report.hpp"

#include <fmt/format.h>
#include <fmt/ostream.h>

#include <algorithm>
#include <map>
#include <cmath>
#include <numeric>

#include "methods/adapter_set.hpp"
#include "text_format.hpp"
#include "command_line.hpp"

namespace revmerge::cli {

std::vector<double> overall_delta_error(const BundleManifest& m) {
  std::vector<double> num(m.tasks.size(), 0.0), den(m.tasks.size(), 0.0);
  for (const auto& mod : m.modules)
    for (std::size_t t = 0; t < m.tasks.size(); ++t) {
      const double e = mod.delta_error[t] * mod.delta_norm[t];
      num[t] += e * e;
      den[t] += mod.delta_norm[t] * mod.delta_norm[t];
    }
  std::vector<double> out;
  for (std::size_t t = 0; t < num.size(); ++t)
    out.push_back(std::isnan(num[t]) || std::isnan(den[t]) ? NAN
                  : den[t] > 0                             ? std::sqrt(num[t] / den[t])
                                                           : 0.0);
  return out;
}

double retained_energy(const std::vector<double>& s, std::int64_t p) {
  const double total = std::accumulate(s.begin(), s.end(), 0.0);
  const double kept = std::accumulate(s.begin(), s.begin() + std::min<std::size_t>(p, s.size()), 0.0);
  return total > 0 ? kept / total : 1.0;
}

namespace {

// The largest entry; NaN when any entry is NaN (an error that could not be measured is the worst).
double max_of(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) {
    if (std::isnan(x)) return x;
    m = std::max(m, x);
  }
  return m;
}

// Modules ordered by their worst task's delta error, worst first.
std::vector<const BundleModule*> worst_first(const BundleManifest& m) {
  std::vector<const BundleModule*> out;
  for (const auto& mod : m.modules) out.push_back(&mod);
  // NaN (unmeasurable) sorts first, as the worst; the key keeps the order a strict weak one.
  const auto key = [](const BundleModule* m) {
    const double e = max_of(m->delta_error);
    return std::isnan(e) ? INFINITY : e;
  };
  std::stable_sort(out.begin(), out.end(), [&](auto* a, auto* b) { return key(a) > key(b); });
  return out;
}

struct Spread {
  double min = 0, median = 0, max = 0;
};

Spread spread(std::vector<double> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  return {v.front(), v[v.size() / 2], v.back()};
}

}  // namespace

std::vector<std::string> bundle_warnings(const BundleManifest& m) {
  std::vector<std::string> out;
  std::vector<std::string> names, bases;
  for (const auto& t : m.tasks) names.push_back(t.name), bases.push_back(t.base_model_name_or_path);
  if (auto text = differing_base_models(names, bases); !text.empty()) out.push_back(std::move(text));
  if (m.format_version == 1 && m.input_bytes != 0 && m.stored_bytes > m.input_bytes)
    out.push_back(fmt::format(
        "the bundle's tensors take {} in {}, {:.2f}× the {} of the tasks' own factors: a basis of "
        "{} for {} tasks stores more than keeping every adapter (a smaller --basis, or --dtype bf16 "
        "where the inputs are 16-bit, stores less)",
        human_bytes(m.stored_bytes), dtype_name(m.dtype), double(m.stored_bytes) / double(m.input_bytes),
        human_bytes(m.input_bytes), m.basis, m.tasks.size()));
  return out;
}

namespace {

// "4+0+3".
std::string ranks_text(const std::vector<std::int64_t>& kept) {
  std::string out;
  for (const auto k : kept) {
    if (!out.empty()) out += '+';
    out += std::to_string(k);
  }
  return out;
}

// "rmm P=2", "rmm P=1/0" (A/B), "rank 4+0+3", "shared rows K=16" or "shared Kv=40 Ku=72";
// tasks added later follow as "; added 2+1".
std::string representation_text(const BundleModule& mod) {
  std::string out = mod.representation == Representation::rank ? "rank " + ranks_text(mod.kept_ranks)
                    : mod.representation == Representation::shared_rows
                        ? fmt::format("shared rows K={}", mod.shared_rank)
                    : mod.representation == Representation::shared
                        ? fmt::format("shared Kv={} Ku={}", mod.shared_basis[0], mod.shared_basis[1])
                    : mod.basis[0] == mod.basis[1] ? fmt::format("rmm P={}", mod.basis[0])
                                                   : fmt::format("rmm P={}/{}", mod.basis[0], mod.basis[1]);
  if (!mod.added_kept_ranks.empty()) out += "; added " + ranks_text(mod.added_kept_ranks);
  return out;
}

// "2 rmm (P=1: 1, P=2/1: 1), 5 rank, 1 shared rows, 2 shared" — how many modules took each
// representation (P per side A/B where they differ).
std::string representation_counts(const BundleManifest& m) {
  std::map<std::string, std::size_t> rmm;
  std::size_t rank = 0, shared = 0, both = 0, rmm_total = 0;
  for (const auto& mod : m.modules)
    if (mod.representation == Representation::rank)
      ++rank;
    else if (mod.representation == Representation::shared_rows)
      ++shared;
    else if (mod.representation == Representation::shared)
      ++both;
    else
      ++rmm[mod.basis[0] == mod.basis[1] ? fmt::format("P={}", mod.basis[0])
                                         : fmt::format("P={}/{}", mod.basis[0], mod.basis[1])],
          ++rmm_total;
  std::string out;
  if (rmm_total) {
    out = fmt::format("{} rmm (", rmm_total);
    bool first = true;
    for (const auto& [p, count] : rmm) out += fmt::format("{}{}: {}", first ? "" : ", ", p, count), first = false;
    out += ")";
  }
  if (rank) out += fmt::format("{}{} rank", out.empty() ? "" : ", ", rank);
  if (shared) out += fmt::format("{}{} shared rows", out.empty() ? "" : ", ", shared);
  if (both) out += fmt::format("{}{} shared", out.empty() ? "" : ", ", both);
  return out;
}

// Energy kept by an rmm module's basis on side s (0: A, 1: B); NaN for a rank module (no
// per-position basis).
double energy(const BundleModule& mod, int s) {
  if (mod.representation != Representation::rmm) return NAN;
  return retained_energy(s == 0 ? mod.spectrum_a : mod.spectrum_b, mod.basis[s]);
}

// "storage: …" — bytes on disk beside the tasks' own factors where the bundle records them.
std::string storage_line(const BundleManifest& m) {
  if (m.input_bytes == 0)
    return fmt::format("storage: {:.4f} of the task adapters' numbers ({:.1f}% saved)", m.storage_ratio,
                       100.0 * (1.0 - m.storage_ratio));
  const double ratio = double(m.stored_bytes) / double(m.input_bytes);
  return fmt::format("storage: {} in {} against {} in the tasks' own factors ({:.3f}×, {})",
                     human_bytes(m.stored_bytes), dtype_name(m.dtype), human_bytes(m.input_bytes), ratio,
                     ratio <= 1 ? fmt::format("{:.1f}% saved", 100.0 * (1.0 - ratio))
                                : fmt::format("{:.1f}% larger than the inputs", 100.0 * (ratio - 1.0)));
}

}  // namespace

void print_bundle_report(const BundleManifest& m, const std::string& where, std::size_t top) {
  const auto overall = overall_delta_error(m);
  if (m.format_version == 1)
    fmt::print(report_out(), "RMM bundle {}: {} tasks, basis {}, {} modules, stored as {}\n", where, m.tasks.size(),
               m.basis, m.modules.size(), dtype_name(m.dtype));
  else
    fmt::print(report_out(), "bundle {} (method {}): {} tasks, {} modules: {}; stored as {}\n", where, m.method,
               m.tasks.size(), m.modules.size(), representation_counts(m), dtype_name(m.dtype));
  if (m.represented_tasks() != static_cast<std::int64_t>(m.tasks.size()))
    fmt::print(report_out(), "tasks added later (each its own truncation per module): {} after the first {}\n",
               m.tasks.size() - m.represented_tasks(), m.represented_tasks());
  if (!m.backend.empty()) fmt::print(report_out(), "computed on: {}\n", m.backend);
  if (m.fan_in_fan_out)
    fmt::print(report_out(), "fan_in_fan_out: the base stores its weights in × out (GPT-2's Conv1D); "
                             "reverted adapters say so, `revert --full` adds each delta transposed\n");
  fmt::print(report_out(), "{}\n", storage_line(m));
  fmt::print(report_out(), "\n{:<24} {:>14} {:>14} {:>14}\n", "task", "delta error", "worst module", "mean module");
  for (std::size_t t = 0; t < m.tasks.size(); ++t) {
    double sum = 0;
    std::vector<double> per_module;
    for (const auto& mod : m.modules) {
      per_module.push_back(mod.delta_error[t]);
      sum += mod.delta_error[t];
    }
    const double worst = max_of(per_module);
    fmt::print(report_out(), "{:<24} {:>14.3e} {:>14.3e} {:>14.3e}\n", m.tasks[t].name, overall[t], worst,
               m.modules.empty() ? 0.0 : sum / double(m.modules.size()));
  }
  std::vector<double> ea, eb;
  for (const auto& mod : m.modules)
    if (mod.representation == Representation::rmm) {
      ea.push_back(energy(mod, 0));
      eb.push_back(energy(mod, 1));
    }
  if (!ea.empty()) {
    const auto sa = spread(ea), sb = spread(eb);
    if (m.format_version == 1)
      fmt::print(report_out(), "\nenergy kept by the basis (top {} of {} eigenvalues), min / median / max over modules:\n",
                 m.basis, m.tasks.size());
    else
      fmt::print(report_out(), "\nenergy kept by the rmm modules' bases, min / median / max over those modules:\n");
    fmt::print(report_out(), "  lora_A: {:.4f} / {:.4f} / {:.4f}\n  lora_B: {:.4f} / {:.4f} / {:.4f}\n", sa.min,
               sa.median, sa.max, sb.min, sb.median, sb.max);
  }
  const auto order = worst_first(m);
  const auto shown = std::min(top, order.size());
  if (shown == 0) return;
  fmt::print(report_out(), "\nworst modules (by their worst task's delta error):\n");
  if (m.format_version == 1) {
    fmt::print(report_out(), "  {:<40} {:>5} {:>12} {:>10} {:>10}\n", "module", "rank", "delta error", "energy A",
               "energy B");
    for (std::size_t i = 0; i < shown; ++i) {
      const auto* mod = order[i];
      fmt::print(report_out(), "  {:<40} {:>5} {:>12.3e} {:>10.4f} {:>10.4f}\n", mod->path, mod->rank,
                 max_of(mod->delta_error), energy(*mod, 0), energy(*mod, 1));
    }
    return;
  }
  fmt::print(report_out(), "  {:<40} {:>5} {:>12} {:>8}  {}\n", "module", "rank", "delta error", "storage",
             "stored as");
  for (std::size_t i = 0; i < shown; ++i) {
    const auto* mod = order[i];
    fmt::print(report_out(), "  {:<40} {:>5} {:>12.3e} {:>8.4f}  {}\n", mod->path, mod->rank, max_of(mod->delta_error),
               mod->storage_ratio, representation_text(*mod));
  }
}

nlohmann::ordered_json bundle_report_json(const BundleManifest& m, const std::string& where) {
  nlohmann::ordered_json j;
  j["kind"] = "revmerge_bundle";
  j["path"] = where;
  const auto overall = overall_delta_error(m);
  j["summary"] = nlohmann::ordered_json::object();
  j["summary"]["storage_ratio"] = m.storage_ratio;
  if (m.input_bytes != 0) {
    j["summary"]["stored_bytes"] = m.stored_bytes;
    j["summary"]["input_bytes"] = m.input_bytes;
  }
  j["summary"]["warnings"] = bundle_warnings(m);
  for (std::size_t t = 0; t < m.tasks.size(); ++t) j["summary"]["delta_error"][m.tasks[t].name] = overall[t];
  j["summary"]["worst_modules"] = nlohmann::ordered_json::array();
  for (const auto* mod : worst_first(m)) {
    nlohmann::ordered_json e{{"path", mod->path}, {"delta_error", max_of(mod->delta_error)},
                             {"representation", representation_name(mod->representation)}};
    if (mod->representation == Representation::rmm) {
      e["basis_a"] = mod->basis[0];
      e["basis_b"] = mod->basis[1];
      e["energy_a"] = energy(*mod, 0);
      e["energy_b"] = energy(*mod, 1);
    } else if (mod->representation == Representation::rank) {
      e["kept_ranks"] = mod->kept_ranks;
    } else if (mod->representation == Representation::shared_rows) {
      e["shared_rank"] = mod->shared_rank;
    } else {
      e["shared_basis"] = mod->shared_basis;
    }
    j["summary"]["worst_modules"].push_back(std::move(e));
  }
  j["manifest"] = nlohmann::ordered_json::parse(manifest_to_json(m));
  return j;
}

}  // namespace revmerge::cli
