#include "methods/lowrank/pt_svd.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "revmerge/error.hpp"

namespace revmerge {

void check_fine_tune_tensor(const HfModel& ft, const LinearWeight& w, const std::string& whose) {
  const auto* t = ft.checkpoint().find(w.tensor);
  if (!t)
    throw shape_error(ft.dir().string() + ": tensor '" + w.tensor + "' of the base is missing "
                      "from " + whose);
  if (t->info->shape != std::vector<std::int64_t>{w.out, w.in})
    throw shape_error(ft.dir().string() + ": tensor '" + w.tensor + "' is not " +
                      std::to_string(w.out) + " × " + std::to_string(w.in) +
                      " as in the base; the model is not a fine-tune of this base");
}

double read_delta_into(const HfModel& base, const HfModel& ft, const LinearWeight& w,
                       std::span<double> delta) {
  const auto& ff = *ft.checkpoint().at(w.tensor).file;
  const auto& bf = *base.checkpoint().at(w.tensor).file;
  const auto& finfo = ff.at(w.tensor);
  const auto& binfo = bf.at(w.tensor);
  for (const auto& [info, model] : {std::pair{&finfo, &ft}, std::pair{&binfo, &base}})
    if (!is_float_dtype(info->dtype) || info->nbytes() != delta.size() * dtype_size(info->dtype))
      throw format_error(model->dir().string() + ": tensor '" + w.tensor + "' is not a float tensor of " +
                         std::to_string(delta.size()) + " elements");
  const auto fraw = ff.bytes(finfo), braw = bf.bytes(binfo);
  const std::size_t felem = dtype_size(finfo.dtype), belem = dtype_size(binfo.dtype);
  constexpr std::size_t kBlock = 1 << 16;
  std::vector<double> block(kBlock);
  double sq = 0;
  for (std::size_t at = 0; at < delta.size(); at += kBlock) {
    const std::size_t count = std::min(kBlock, delta.size() - at);
    double* d = delta.data() + at;
    convert_to_f64(finfo.dtype, fraw.data() + at * felem, d, count);
    convert_to_f64(binfo.dtype, braw.data() + at * belem, block.data(), count);
    double flag = 0, part = 0;
    for (std::size_t j = 0; j < count; ++j) {
      d[j] -= block[j];
      flag += d[j] * 0.0;
      part += d[j] * d[j];
    }
    if (flag != 0)
      for (std::size_t j = 0; j < count; ++j)
        if (!std::isfinite(d[j]))
          throw format_error(ft.dir().string() + ": tensor '" + w.tensor + "' holds a non-finite "
                             "value (or its difference to the base is) at element " +
                             std::to_string(at + j));
    sq += part;
  }
  ff.evict(finfo);
  bf.evict(binfo);
  return sq;
}

}  // namespace revmerge
