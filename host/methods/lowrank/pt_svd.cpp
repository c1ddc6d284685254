#include "methods/lowrank/pt_svd.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "backend/cpu_parallel.hpp"
#include "revmerge/error.hpp"

namespace revmerge {

void check_fine_tune_tensor(const HfModel& ft, const LinearWeight& w, const std::string& whose) {
  const auto* t = ft.checkpoint().find(w.tensor);
  if (!t)
    throw shape_error(ft.dir().string() + ": tensor '" + w.tensor + "' of the base is missing "
                      "from " + whose);
  if (t->info->shape != std::vector<std::int64_t>{w.rows(), w.cols()})
    throw shape_error(ft.dir().string() + ": tensor '" + w.tensor + "' is not " +
                      std::to_string(w.rows()) + " × " + std::to_string(w.cols()) +
                      " as in the base; the model is not a fine-tune of this base");
}

namespace {

[[noreturn]] void throw_nonfinite(const HfModel& ft, const LinearWeight& w, std::size_t element) {
  throw format_error(ft.dir().string() + ": tensor '" + w.tensor + "' holds a non-finite value (or "
                     "its difference to the base is) at element " + std::to_string(element));
}

// Done with a weight's bytes: throws if its file shrank while they were read, then drops them.
void evict(const HfModel& model, const LinearWeight& w) {
  const auto& file = *model.checkpoint().at(w.tensor).file;
  file.check_intact();
  file.evict(file.at(w.tensor));
}

}  // namespace

RawWeight raw_weight(const HfModel& model, const LinearWeight& w) {
  const auto& file = *model.checkpoint().at(w.tensor).file;
  const auto& info = file.at(w.tensor);
  const auto count = static_cast<std::uint64_t>(w.in * w.out);
  if (!is_float_dtype(info.dtype) || info.nbytes() != count * dtype_size(info.dtype))
    throw format_error(model.dir().string() + ": tensor '" + w.tensor + "' is not a float tensor of " +
                       std::to_string(count) + " elements");
  return {file.bytes(info).data(), info.dtype};
}

double read_delta_into(const HfModel& base, const HfModel& ft, const LinearWeight& w,
                       std::span<double> delta, std::span<float> delta32, int threads) {
  const auto fraw = raw_weight(ft, w), braw = raw_weight(base, w);
  const std::size_t felem = dtype_size(fraw.dtype), belem = dtype_size(braw.dtype);
  constexpr std::size_t kBlock = 1 << 16;
  const auto blocks = static_cast<std::int64_t>((delta.size() + kBlock - 1) / kBlock);
  std::vector<double> parts(static_cast<std::size_t>(blocks));
  std::vector<char> bad(static_cast<std::size_t>(blocks), 0);
  cpu::parallel_for(std::max(threads, 1), blocks, [&](std::int64_t blk) {
    thread_local std::vector<double> base_part;
    base_part.resize(kBlock);
    const std::size_t at = static_cast<std::size_t>(blk) * kBlock;
    const std::size_t count = std::min(kBlock, delta.size() - at);
    double* d = delta.data() + at;
    convert_to_f64(fraw.dtype, fraw.data + at * felem, d, count);
    convert_to_f64(braw.dtype, braw.data + at * belem, base_part.data(), count);
    double flag = 0, part = 0;
    for (std::size_t j = 0; j < count; ++j) {
      d[j] -= base_part[j];
      flag += d[j] * 0.0;
      part += d[j] * d[j];
    }
    if (!delta32.empty()) std::copy(d, d + count, delta32.data() + at);  // still in cache
    parts[static_cast<std::size_t>(blk)] = part;
    bad[static_cast<std::size_t>(blk)] = flag != 0;
  });
  double sq = 0;
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const std::size_t at = static_cast<std::size_t>(blk) * kBlock;
    if (bad[static_cast<std::size_t>(blk)])
      for (std::size_t j = at; j < std::min(at + kBlock, delta.size()); ++j)
        if (!std::isfinite(delta[j])) throw_nonfinite(ft, w, j);
    sq += parts[static_cast<std::size_t>(blk)];
  }
  evict(ft, w);
  evict(base, w);
  return sq;
}

std::vector<DeltaSvd> batched_pt_svd(BatchedPtSvd& engine, const HfModel& base,
                                     std::span<const HfModel* const> fine_tunes,
                                     const LinearWeight& w, const RandomizedSvdOptions& options,
                                     const BatchedPtSvd::Stacks* stacks) {
  std::vector<RawWeight> raws;
  for (const auto* ft : fine_tunes) raws.push_back(raw_weight(*ft, w));
  const auto b = raw_weight(base, w);
  // The engine factors the column-major matrix the file's bytes are (cols × rows): Δᵀ, or Δ
  // itself for a weight stored in × out, whose U and V then trade places.
  std::vector<DeltaSvd> results;
  if (stacks) {
    auto into = *stacks;
    into.stored_in_by_out = w.stored_in_by_out;
    results = engine.run_into_stacks(b, raws, w.cols(), w.rows(), options, into);
  } else {
    results = engine.run(b, raws, w.cols(), w.rows(), options);
    if (w.stored_in_by_out)
      for (auto& r : results) std::swap(r.svd.u, r.svd.v);
  }
  for (std::size_t t = 0; t < results.size(); ++t)
    if (results[t].nonfinite_at >= 0)
      throw_nonfinite(*fine_tunes[t], w, static_cast<std::size_t>(results[t].nonfinite_at));
  for (const auto* ft : fine_tunes) evict(*ft, w);
  evict(base, w);
  return results;
}

}  // namespace revmerge
