// revmerge compress: PT-SVD of a full fine-tune against its base, module by module.
#include "revmerge/compress.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "core/interrupt.hpp"
#include "kernels/counter_rng.hpp"
#include "methods/lowrank/randomized_svd.hpp"
#include "revmerge/error.hpp"
#include "revmerge/hf_model.hpp"
#include "revmerge/peft.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

bool listed(const std::vector<std::string>& names, const LinearWeight& w) {
  for (const auto& n : names)
    if (w.name == n || w.name.ends_with("." + n) || w.path == n) return true;
  return false;
}

void check_options(const CompressOptions& o) {
  if (o.rank < 1) throw usage_error("--rank: give the adapter rank (≥ 1)");
  if (o.oversampling < 0) throw usage_error("--oversampling: must be ≥ 0");
  if (o.power_iterations < 0) throw usage_error("--power-iterations: must be ≥ 0");
  if (!(o.energy >= 0 && o.energy <= 1))
    throw usage_error("--energy: " + std::to_string(o.energy) + " is outside (0, 1]");
  if (o.out.empty()) throw usage_error("--out: no adapter folder given");
  if (!is_float_dtype(o.dtype) || o.dtype == DType::F64)
    throw usage_error("--dtype: an adapter is written as f32, f16 or bf16");
}

}  // namespace

CompressReport compress_checkpoint(const CompressOptions& o) {
  check_options(o);
  const HfModel base(o.base), ft(o.model);
  std::vector<const LinearWeight*> chosen;
  for (const auto& w : base.linears()) {
    if (!o.include.empty() && !listed(o.include, w)) continue;
    if (listed(o.exclude, w)) continue;
    chosen.push_back(&w);
  }
  if (chosen.empty())
    throw usage_error(o.base.string() + ": no linear module left to compress (check --include / "
                      "--exclude against the names `revmerge info` lists)");
  for (const auto* w : chosen) {
    const auto* t = ft.checkpoint().find(w->tensor);
    if (!t)
      throw shape_error(o.model.string() + ": tensor '" + w->tensor + "' of the base is missing "
                        "from the fine-tune");
    if (t->info->shape != std::vector<i64>{w->out, w->in})
      throw shape_error(o.model.string() + ": tensor '" + w->tensor + "' is not " +
                        std::to_string(w->out) + " × " + std::to_string(w->in) +
                        " as in the base; the model is not a fine-tune of this base");
  }
  if (o.threads > 0) openblas_set_num_threads(o.threads);  // the BLAS calls are the work
  std::vector<LoraModuleData> modules;
  CompressReport report;
  double err = 0, norm = 0, stored = 0, dense = 0;
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    throw_if_interrupted("compress");
    const auto& w = *chosen[i];
    const auto wb = base.checkpoint().at(w.tensor).file->read_f64(w.tensor);
    auto delta = ft.checkpoint().at(w.tensor).file->read_f64(w.tensor);
    double sq = 0;
    for (std::size_t j = 0; j < delta.size(); ++j) {
      delta[j] -= wb[j];
      if (!std::isfinite(delta[j]))
        throw format_error(o.model.string() + ": tensor '" + w.tensor + "' holds a non-finite "
                           "value (or its difference to the base is) at element " + std::to_string(j));
      sq += delta[j] * delta[j];
    }
    // Row-major out × in is column-major in × out (M = Δᵀ); Δ = V S Uᵀ from M = U S Vᵀ.
    const auto svd = randomized_svd(delta, w.in, w.out,
                                    {o.rank, o.oversampling, o.power_iterations, o.seed,
                                     kernels::stream_id(w.tensor)});
    i64 k = svd.k;
    if (o.energy > 0 && sq > 0) {
      double kept = 0;
      for (k = 0; k < svd.k && kept < o.energy * sq; ++k) kept += svd.s[k] * svd.s[k];
      k = std::max<i64>(k, 1);
    }
    double kept = 0;
    for (i64 c = 0; c < k; ++c) kept += svd.s[c] * svd.s[c];
    LoraModuleData m{w.path, k, w.in, w.out, std::vector<float>(static_cast<std::size_t>(k * w.in)),
                     std::vector<float>(static_cast<std::size_t>(w.out * k))};
    for (i64 c = 0; c < k; ++c) {
      for (i64 x = 0; x < w.in; ++x) m.a[c * w.in + x] = static_cast<float>(svd.u[c * w.in + x]);
      for (i64 y = 0; y < w.out; ++y)
        m.b[y * k + c] = static_cast<float>(svd.v[c * w.out + y] * svd.s[c]);
    }
    const double module_err = std::max(sq - kept, 0.0);
    report.modules.push_back({w.path, w.out, w.in, k, sq > 0 ? std::sqrt(module_err / sq) : 0.0,
                              std::sqrt(sq)});
    err += module_err;
    norm += sq;
    stored += double(k) * double(w.in + w.out);
    dense += double(w.in) * double(w.out);
    modules.push_back(std::move(m));
    if (o.progress) o.progress(i + 1, chosen.size(), w.path);
  }
  report.relative_error = norm > 0 ? std::sqrt(err / norm) : 0;
  report.storage = stored / dense;
  AdapterWriteOptions wo;
  wo.base_model_name_or_path = o.base.string();
  wo.dtype = o.dtype;
  wo.overwrite = o.overwrite;
  wo.metadata = {{"revmerge.method", "pt-svd"}};
  throw_if_interrupted("compress");
  write_peft_adapter(o.out, modules, wo);
  return report;
}

}  // namespace revmerge
