// The adapters of a set as the RMM pipeline's source: each module's A and B tensors copied into
// the staging block as stored (16-byte aligned, task after task), and the messages that name a
// non-finite input by file, tensor and element.
#include "methods/rmm_pipeline.hpp"

#include <cmath>
#include <cstring>
#include <string>

#include "methods/materialize_parts.hpp"
#include "revmerge/error.hpp"

namespace revmerge {

using i64 = std::int64_t;

namespace {

std::uint64_t align16(std::uint64_t x) { return (x + 15) / 16 * 16; }

// Wider first: the dtype a bundle of these inputs stores by default.
DType wider(DType a, DType b) {
  auto rank = [](DType t) { return t == DType::F64 ? 3 : t == DType::F32 ? 2 : t == DType::F16 ? 1 : 0; };
  return rank(a) >= rank(b) ? a : b;
}

}  // namespace

StagedModule f32_stacks_layout(i64 n, i64 r, i64 in, i64 out) {
  StagedModule m;
  const auto a_bytes = static_cast<std::uint64_t>(4 * n * r * in);
  for (i64 t = 0; t < n; ++t)
    m.tasks.push_back({static_cast<std::uint64_t>(4 * t * r * in),
                       a_bytes + static_cast<std::uint64_t>(4 * t * out * r),
                       kernels::ElemType::f32, static_cast<std::int32_t>(r), 1.0f});
  m.bytes = a_bytes + static_cast<std::uint64_t>(4 * n * out * r);
  return m;
}

RmmSource adapter_source(const AdapterSet& set, int reader_threads) {
  reader_threads = helper_threads(reader_threads, 4);
  RmmSource source;
  source.plan = set.plan;
  bool first = true;
  for (const auto& pm : set.plan)
    for (std::size_t t = 0; t < pm.per_task.size(); ++t)
      for (const auto* key : {&pm.per_task[t]->key_a, &pm.per_task[t]->key_b}) {
        const auto& info = set.adapters[t]->weights().at(*key);
        source.bytes_total += info.nbytes();
        source.factor_bytes += info.nbytes();
        source.input_dtype = first ? info.dtype : wider(source.input_dtype, info.dtype);
        first = false;
      }
  // Task after task, A then B, each 16-byte aligned.
  auto layout = [&set](const PlannedModule& pm, std::vector<const TensorInfo*>* infos) {
    std::uint64_t at = 0;
    StagedModule m;
    for (std::size_t t = 0; t < pm.per_task.size(); ++t) {
      const auto& mod = *pm.per_task[t];
      const auto& file = set.adapters[t]->weights();
      const auto& ia = file.at(mod.key_a);
      const auto& ib = file.at(mod.key_b);
      if (ia.dtype != ib.dtype)
        throw format_error(file.path().string() + ": tensors '" + mod.key_a + "' (" +
                           std::string(dtype_name(ia.dtype)) + ") and '" + mod.key_b + "' (" +
                           std::string(dtype_name(ib.dtype)) + ") of one module differ in dtype");
      StagedFactors f;
      f.type = kernel_type(ia.dtype, file.path().string() + ": tensor '" + mod.key_a + "'");
      f.rank = static_cast<std::int32_t>(mod.rank);
      f.scale = static_cast<float>(mod.scale);
      f.a = at;
      at = align16(at + ia.nbytes());
      f.b = at;
      at = align16(at + ib.nbytes());
      m.tasks.push_back(f);
      if (infos) infos->insert(infos->end(), {&ia, &ib});
    }
    m.bytes = at;
    return m;
  };
  source.staged_bytes = [layout](const PlannedModule& pm) { return layout(pm, nullptr).bytes; };
  source.load = [&set, layout, reader_threads](const PlannedModule& pm, std::byte* block) {
    std::vector<const TensorInfo*> infos;
    auto m = layout(pm, &infos);
    const auto n = static_cast<std::int64_t>(pm.per_task.size());
    std::uint64_t bytes_read = 0;
    // A memcpy per tensor from the mapped file (the routine widens the bytes where it uses
    // them), the tasks shared among the reader threads.
#pragma omp parallel for num_threads(reader_threads) schedule(dynamic) reduction(+ : bytes_read) if (reader_threads > 1)
    for (std::int64_t t = 0; t < n; ++t) {
      const auto& file = set.adapters[t]->weights();
      for (int side = 0; side < 2; ++side) {
        const auto bytes = file.bytes(*infos[2 * t + side]);
        std::memcpy(block + (side == 0 ? m.tasks[t].a : m.tasks[t].b), bytes.data(), bytes.size());
        bytes_read += bytes.size();
      }
      // One madvise for the module's two tensors (adjacent in name order, so usually in the
      // file): each call can interrupt every thread of the process to flush its mappings.
      file.evict(*infos[2 * t], *infos[2 * t + 1]);
    }
    for (std::int64_t t = 0; t < n; ++t) set.adapters[t]->weights().check_intact();
    m.file_bytes = bytes_read;
    return m;
  };
  source.nonfinite_message = [&set](const PlannedModule& pm, unsigned long long key) {
    const auto t = static_cast<std::size_t>(key >> 49);
    const int side = static_cast<int>((key >> 48) & 1);
    const auto index = static_cast<std::size_t>(key & ((1ull << 48) - 1));
    const auto& mod = *pm.per_task.at(t);
    const auto& file = set.adapters[t]->weights();
    const auto& tensor = side == 0 ? mod.key_a : mod.key_b;
    const auto& info = file.at(tensor);
    float value = 0;
    convert_to_f32(info.dtype, file.bytes(info).data() + index * dtype_size(info.dtype), &value, 1);
    std::string what = "holds a non-finite value (" + std::to_string(value) + ") at element " +
                       std::to_string(index);
    if (std::isfinite(value))
      what = "holds " + std::to_string(value) + " at element " + std::to_string(index) +
             ", which is not finite once scaled by " + std::to_string(mod.scale);
    return file.path().string() + ": tensor '" + tensor + "' " + what +
           " (pass --allow-nonfinite to merge it anyway)";
  };
  return source;
}

}  // namespace revmerge
