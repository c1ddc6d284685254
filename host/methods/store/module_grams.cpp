#include "methods/store/module_grams.hpp"

#include <algorithm>

#include "core/tiled_transpose.hpp"
#include "methods/store/backend_values.hpp"

namespace revmerge {

using i64 = std::int64_t;

std::vector<double> ModuleGrams::block(const std::vector<double>& g, std::size_t t, i64 rank, double factor,
                                       i64 pad) const {
  const i64 R = total_rank, o = first[t], p = pad > 0 ? pad : rank;
  std::vector<double> out(static_cast<std::size_t>(p * p), 0.0);
  for (i64 x = 0; x < rank; ++x)
    for (i64 y = 0; y < rank; ++y) out[x * p + y] = factor * g[(o + x) * R + o + y];
  return out;
}

ModuleGrams module_grams(Backend& be, Stream stream, const std::vector<TaskFactors>& f, i64 out, i64 in) {
  ModuleGrams g;
  for (const auto& tf : f) g.first.push_back(g.total_rank), g.total_rank += tf.rank;
  const i64 R = g.total_rank;
  g.a.assign(static_cast<std::size_t>(R * R), 0.0);
  g.b.assign(g.a.size(), 0.0);
  if (R == 0) return g;
  // The stacks as R rows: the A_i's rows, then the B_i's columns as rows — made in the
  // backend's memory where it is the host's (no fresh vectors to fault in), else staged.
  const std::size_t gram_bytes = g.a.size() * sizeof(double);
  std::vector<float> stage_a, stage_b;
  DeviceBuffer da, db, ga = be.allocate(gram_bytes), gb = be.allocate(gram_bytes);
  fill_on_backend(be, stream, da, static_cast<std::size_t>(R * in), stage_a, [&](float* a) {
    for (const auto& tf : f) a = std::copy(tf.a.begin(), tf.a.begin() + tf.rank * in, a);
  });
  fill_on_backend(be, stream, db, static_cast<std::size_t>(R * out), stage_b, [&](float* b) {
    for (std::size_t i = 0; i < f.size(); ++i)
      transpose_tiled(b + g.first[i] * out, out, f[i].b.data(), f[i].rank, out, f[i].rank);
  });
  be.gram_f64(da.f32(), R, in, static_cast<double*>(ga.data()), stream);
  be.gram_f64(db.f32(), R, out, static_cast<double*>(gb.data()), stream);
  be.download(g.a.data(), ga.data(), gram_bytes, stream);
  be.download(g.b.data(), gb.data(), gram_bytes, stream);
  be.synchronize(stream);
  return g;
}

}  // namespace revmerge
