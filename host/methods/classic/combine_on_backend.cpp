// The element-wise full-model merges on a backend (combine_on_backend.hpp): the CPU merge's
// passes (merge_in_pieces with CombinePieces) step for step, each step a kernels/elementwise.hpp
// loop on the backend's stream.
#include "methods/classic/combine_on_backend.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>

#include "backend/backend.hpp"
#include "core/interrupt.hpp"
#include "kernels/elementwise.hpp"
#include "methods/classic/backend_arrays.hpp"
#include "methods/classic/combine.hpp"
#include "methods/classic/rank_select.hpp"
#include "methods/classic/thinning.hpp"
#include "methods/classic/thinning_on_backend.hpp"
#include "methods/materialize_parts.hpp"
#include "revmerge/error.hpp"

namespace revmerge {

using i64 = std::int64_t;
using kernels::ElementwiseKind;
using kernels::ElementwiseStep;

std::string backend_combine_refusal(const ClassicMergeOptions& o) {
  const std::string cpu_only = " runs on the CPU only in this version";
  if (o.tasks.size() > static_cast<std::size_t>(kernels::kMaxElementwiseInputs))
    return "--device: at most " + std::to_string(kernels::kMaxElementwiseInputs) +
           " models merge on a GPU in this version (" + std::to_string(o.tasks.size()) + " given)";
  if (blends_two_models(o.method) || o.method == ClassicMethod::model_stock || o.method == ClassicMethod::passthrough ||
      is_spherical(o.method) || is_selective(o.method) || is_elementwise(o.method))
    return {};
  return "--method " + to_string(o.method) + cpu_only;
}

namespace {

using backend_arrays::as;
using backend_arrays::fetch;
using backend_arrays::filled;

// One copy of a staged chunk: `bytes` from `src` to `dst`.
struct Copy {
  unsigned char* dst;
  const std::byte* src;
  std::size_t bytes;
};

// The copies, in parts of 1 MiB on `threads` threads: one thread copies from the page cache at a
// fraction of what the memory moves.
void parallel_copy(const std::vector<Copy>& copies, int threads) {
  constexpr std::size_t kPart = std::size_t{1} << 20;
  std::vector<std::pair<std::size_t, std::size_t>> parts;  // (copy, offset)
  for (std::size_t c = 0; c < copies.size(); ++c)
    for (std::size_t at = 0; at < copies[c].bytes; at += kPart) parts.emplace_back(c, at);
  const auto count = static_cast<i64>(parts.size());
#pragma omp parallel for num_threads(count > 1 ? threads : 1) schedule(static)
  for (i64 p = 0; p < count; ++p) {
    const auto& [c, at] = parts[static_cast<std::size_t>(p)];
    std::memcpy(copies[c].dst + at, copies[c].src + at, std::min(kPart, copies[c].bytes - at));
  }
}

}  // namespace

struct CombineOnBackend::State {
  State(Backend& b, std::size_t tasks, bool base) : backend(b), stream(b.create_stream()), n(tasks), has_base(base) {}
  Backend& backend;
  Stream stream;
  std::size_t n;
  bool has_base;
  i64 piece = 1;
  DeviceBuffer raw, stack, base, out, first_bad, weights;
  DeviceBuffer keep;  // DELLA's decisions for a piece (a byte per element), made when first needed
  DeviceBuffer ties[kernels::kMaxTrimRules], allowances[kernels::kMaxTrimRules];
  // The copies in and out go in chunks through two pinned slots each, so that the host fills one
  // (from the page cache) or empties one (into the writer) while the other is on the bus.
  DeviceBuffer staging[2], out_host[2];
  Event uploaded[2];
  std::size_t uploads = 0;  // chunks uploaded so far: the next goes through slot uploads % 2
  i64 chunk = 1;            // elements of a chunk through the slots
};

CombineOnBackend::CombineOnBackend(Backend& backend, std::size_t n, bool has_base, i64 max_piece, i64 chunk)
    : s_(std::make_unique<State>(backend, n, has_base)) {
  // Per element of a piece on the device: the inputs' bytes (f32 at most; f64 inputs go in
  // pieces half as long), the tasks' and the base's f32 values, the output. A piece is a whole
  // tensor wherever memory allows (a 7b set's tensors all are; a method's passes then read the
  // files once), at most kMostPiece elements.
  constexpr i64 kMostPiece = i64{1} << 28;
  const auto inputs = static_cast<i64>(n + (has_base ? 1 : 0));
  const i64 per = 4 * inputs + 4 * inputs + 4;
  const auto room = static_cast<i64>(backend.memory_available() / 2);
  s_->piece = std::max<i64>(kernels::kTieChunk, std::min({max_piece, room / per, kMostPiece}));
  const auto p = static_cast<std::size_t>(s_->piece);
  const std::size_t raw_bytes = static_cast<std::size_t>(inputs) * (4 * p + 16);
  s_->chunk = std::max<i64>(std::min(chunk, s_->piece), 1);
  const auto chunk_elements = static_cast<std::size_t>(s_->chunk);
  for (int k = 0; k < 2; ++k) {
    s_->staging[k] = backend.allocate_staging(static_cast<std::size_t>(inputs) * 4 * chunk_elements);
    s_->out_host[k] = backend.allocate_staging(4 * chunk_elements);
  }
  s_->raw = backend.allocate(raw_bytes);
  s_->stack = backend.allocate(n * p * 4);
  s_->base = backend.allocate(has_base ? p * 4 : 8);
  s_->out = backend.allocate(p * 4);
  s_->first_bad = backend.allocate((n + 1) * 8);
  s_->weights = backend.allocate(std::max<std::size_t>(n, 1) * 8);
  const std::size_t chunks = p / kernels::kTieChunk + 2;
  for (int r = 0; r < kernels::kMaxTrimRules; ++r) {
    s_->ties[r] = backend.allocate(chunks * 8);
    s_->allowances[r] = backend.allocate(chunks * 8);
  }
}

CombineOnBackend::~CombineOnBackend() {
  if (s_) s_->backend.synchronize(s_->stream);  // nothing queued outlives the buffers
}

void CombineOnBackend::merge(const ClassicMergeOptions& o, const std::string& name, const std::vector<i64>& shape,
                             const TensorSources& src,
                             const std::function<void(std::uint64_t, std::span<const float>)>& sink) {
  State& s = *s_;
  Backend& b = s.backend;
  i64 numel = 1;
  for (const auto d : shape) numel *= d;
  const auto n = static_cast<i64>(s.n);
  const int threads = o.threads > 0 ? o.threads : omp_get_max_threads();
  const bool two_models = blends_two_models(o.method), stock = o.method == ClassicMethod::model_stock;
  const bool nuslerp = o.method == ClassicMethod::nuslerp, multislerp = o.method == ClassicMethod::multislerp;
  const NuslerpPlan along = nuslerp ? nuslerp_plan(o, name, shape) : NuslerpPlan{};
  // model_stock with filter_wise (an angle per row) and nuslerp by rows or columns: pieces of
  // whole rows; DELLA: of whole groups of its rows (Thinning::granule).
  const bool della = is_elementwise(o.method) && make_recipe(o, Convention::mergekit).sparsify == Sparsify::della;
  const bool fusion = o.method == ClassicMethod::arcee_fusion;
  const i64 row = stock && o.filter_wise.value_or(false) && !shape.empty() ? shape.back()
                  : along.layout != 0                                      ? along.row
                  : della  ? (shape.size() >= 2 ? numel / std::max<i64>(shape[0], 1) : numel)
                  : fusion ? std::max<i64>(shape.empty() ? 1 : shape.back(), 1)
                           : 0;
  // The inputs: tasks 0 … n − 1, then the base.
  std::vector<const CheckpointTensor*> inputs(src.models.begin(), src.models.end());
  std::vector<std::string> where(src.model_where.begin(), src.model_where.end());
  if (src.base) {
    inputs.push_back(src.base);
    where.push_back(src.base_where);
  }
  ElementwiseStep widen;
  widen.kind = ElementwiseKind::widen;
  widen.n = static_cast<int>(n);
  widen.has_base = src.base != nullptr;
  // linear, slerp, model_stock, passthrough, nuslerp, multislerp, karcher, ram: the weights
  // themselves (these take the differences in f64, where they take any)
  widen.task_vectors = src.base != nullptr && !two_models && !stock && !is_spherical(o.method) &&
                       o.method != ClassicMethod::passthrough && !is_selective(o.method);
  widen.raw = as<unsigned char>(s.raw);
  widen.x = as<float>(s.stack);
  widen.base = as<float>(s.base);
  widen.first_bad = as<std::uint64_t>(s.first_bad);
  // This tensor's pieces: as long as the staging holds for its inputs' dtypes.
  std::size_t element_bytes = 0;
  for (const auto* in : inputs) element_bytes += dtype_size(in->info->dtype);
  i64 piece = std::min({numel, s.piece, s.piece * 4 * static_cast<i64>(inputs.size()) /
                                            static_cast<i64>(std::max<std::size_t>(element_bytes, 1))});
  if (row > 0 && numel > 0) {
    if (piece < row)
      throw device_error("tensor '" + name + "': --method " + to_string(o.method) + " needs its rows of " +
                           std::to_string(row) + " elements whole, and the device holds pieces of " +
                           std::to_string(piece));
    piece -= piece % row;
  }
  // … and its chunks: as long as a slot holds for them.
  const i64 chunk = std::max<i64>(1, std::min(s.chunk, s.chunk * 4 * static_cast<i64>(inputs.size()) /
                                                           static_cast<i64>(std::max<std::size_t>(element_bytes, 1))));
  std::size_t offset = 0;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    widen.offsets[i] = static_cast<i64>(offset);
    widen.types[i] = kernel_type(inputs[i]->info->dtype, where[i]);
    offset += (static_cast<std::size_t>(piece) * dtype_size(inputs[i]->info->dtype) + 15) / 16 * 16;
  }

  i64 count = 0;
  // The piece at `first`: the files' bytes staged chunk by chunk through the two slots (the host
  // filling one while the other uploads), then widened and checked on the device.
  const auto read = [&](i64 first) {
    throw_if_interrupted("merge");
    count = std::min(piece, numel - first);
    for (i64 c0 = 0; c0 < count; c0 += chunk) {
      const i64 m = std::min(chunk, count - c0);
      const std::size_t slot = s.uploads++ % 2;
      if (s.uploaded[slot].handle()) b.synchronize_event(s.uploaded[slot]);  // the slot's last upload has run
      std::vector<Copy> copies;
      std::size_t at = 0;
      for (const auto* in : inputs) {
        const auto size = dtype_size(in->info->dtype);
        copies.push_back({as<unsigned char>(s.staging[slot]) + at,
                          in->file->bytes(*in->info).data() + static_cast<std::size_t>(first + c0) * size,
                          static_cast<std::size_t>(m) * size});
        at += static_cast<std::size_t>(m) * size;
      }
      parallel_copy(copies, threads);
      for (std::size_t i = 0; i < inputs.size(); ++i) {
        inputs[i]->file->check_intact();
        inputs[i]->file->evict_part(*inputs[i]->info, static_cast<std::uint64_t>(first + c0), static_cast<std::uint64_t>(m));
        const auto size = dtype_size(inputs[i]->info->dtype);
        b.upload(as<unsigned char>(s.raw) + widen.offsets[i] + static_cast<std::size_t>(c0) * size, copies[i].dst,
                 copies[i].bytes, s.stream);
      }
      s.uploaded[slot] = b.record_event(s.stream);
    }
    b.fill(s.first_bad.data(), 0xff, (s.n + 1) * 8, s.stream);
    widen.first = first;
    widen.count = count;
    b.elementwise(widen, s.stream);
    std::vector<std::uint64_t> bad(s.n + 1);
    b.download(bad.data(), s.first_bad.data(), bad.size() * 8, s.stream);
    b.synchronize(s.stream);
    // In the order the CPU reads them: the base, then the tasks.
    for (std::size_t k = 0; k < inputs.size(); ++k) {
      const std::size_t i = src.base ? (k + inputs.size() - 1) % inputs.size() : k;
      const std::size_t word = i < s.n ? i : s.n;
      if (bad[word] != std::numeric_limits<std::uint64_t>::max())
        throw format_error(inputs[i]->file->path().string() + ": tensor '" + inputs[i]->info->name +
                           "' holds a non-finite value at element " + std::to_string(bad[word]) + " (" +
                           where[i] + ")");
    }
  };
  const auto task = [&](i64 t) { return as<float>(s.stack) + t * count; };
  // The merged piece at `first` (in s.out, by `step`) to the sink, downloaded chunk by chunk
  // through the two slots: the writer takes one chunk while the next is on the bus.
  const auto emit = [&](ElementwiseStep step, i64 first) {
    step.first = first;
    step.count = count;
    step.out = as<float>(s.out);
    b.elementwise(step, s.stream);
    Event pending;
    i64 pending_at = -1, pending_count = 0;
    const auto hand_over = [&] {
      b.synchronize_event(pending);
      sink(static_cast<std::uint64_t>(first + pending_at),
           std::span<const float>(as<float>(s.out_host[(pending_at / s.chunk) % 2]), static_cast<std::size_t>(pending_count)));
    };
    for (i64 c0 = 0; c0 < count; c0 += s.chunk) {
      const i64 m = std::min(s.chunk, count - c0);
      b.download(s.out_host[(c0 / s.chunk) % 2].data(), as<float>(s.out) + c0, static_cast<std::size_t>(m) * 4, s.stream);
      Event done = b.record_event(s.stream);
      if (pending_at >= 0) hand_over();  // the chunk before, while this one downloads
      pending = std::move(done);
      pending_at = c0;
      pending_count = m;
    }
    hand_over();
  };

  if (numel == 0) {
    sink(0, {});
    return;
  }
  const bool one_piece = piece >= numel;
  if (one_piece) read(0);
  if (two_models) {  // slerp: a pass for its sums, then the blend; nearswap: element by element
    const double t = two_model_t(o, name);
    ElementwiseStep step;
    step.base = as<float>(s.base);
    step.x = task(0);
    if (o.method == ClassicMethod::slerp) {
      SlerpSums sums(numel);
      const DeviceBuffer lanes = filled(b, sums.lane_count() * 8, 0, s.stream);
      for (i64 first = 0; first < numel; first += piece) {
        if (!one_piece) read(first);
        b.elementwise(sums.step(first, count, as<float>(s.base), task(0), as<double>(lanes)), s.stream);
      }
      fetch(b, s.stream, lanes, sums.lanes());
      step.kind = ElementwiseKind::blend;
      std::tie(step.s0, step.s1) = sums.coefficients(t);
    } else {
      step.kind = ElementwiseKind::nearswap;
      step.t = t;
    }
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      emit(step, first);
    }
    return;
  }

  if (nuslerp) {  // the sums of each vector, its coefficients from the host, then the blend
    float* base = src.base ? as<float>(s.base) : nullptr;
    const i64 vectors = along.layout == 0 ? 1 : along.layout == 1 ? piece / row : row;
    const i64 lanes = along.layout == 0 ? (numel + kernels::kStatBlock - 1) / kernels::kStatBlock * kernels::kStatLanes
                                        : vectors;
    const DeviceBuffer sums = filled(b, static_cast<std::size_t>(3 * lanes) * 8, 0, s.stream);
    const DeviceBuffer coef = b.allocate(static_cast<std::size_t>(4 * vectors) * 8);
    double* at[3] = {as<double>(sums), as<double>(sums) + lanes, as<double>(sums) + 2 * lanes};
    std::vector<double> host_sums(static_cast<std::size_t>(3 * lanes)), host_coef(static_cast<std::size_t>(4 * vectors));
    // host_coef from the sums of `count` vectors, uploaded.
    const auto coefficients = [&](i64 count) {
      fetch(b, s.stream, sums, host_sums);
      for (i64 v = 0; v < count; ++v) {
        const auto c = nuslerp_coefficients(along.t, host_sums[v], host_sums[lanes + v], host_sums[2 * lanes + v]);
        std::copy(c.begin(), c.end(), host_coef.begin() + 4 * v);
      }
      b.upload(coef.data(), host_coef.data(), static_cast<std::size_t>(4 * count) * 8, s.stream);
    };
    if (along.layout != 1) {  // a pass for the tensor's or the columns' sums
      const auto kind = along.layout == 0 ? ElementwiseKind::pair_lanes : ElementwiseKind::pair_columns;
      for (i64 first = 0; first < numel; first += piece) {
        if (!one_piece) read(first);
        b.elementwise(nuslerp_step(kind, along, first, count, as<float>(s.stack), base, at, nullptr, nullptr), s.stream);
      }
      if (along.layout == 0) {
        fetch(b, s.stream, sums, host_sums);
        const i64 blocks = lanes / kernels::kStatLanes;
        const auto c = nuslerp_coefficients(along.t, kernels::lanes_total(host_sums.data(), blocks),
                                            kernels::lanes_total(host_sums.data() + lanes, blocks),
                                            kernels::lanes_total(host_sums.data() + 2 * lanes, blocks));
        std::copy(c.begin(), c.end(), host_coef.begin());
        b.upload(coef.data(), host_coef.data(), 4 * 8, s.stream);
      } else {
        coefficients(vectors);
      }
    }
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      if (along.layout == 1) {  // each row's sums, then its coefficients
        b.elementwise(nuslerp_step(ElementwiseKind::pair_rows, along, first, count, as<float>(s.stack), base, at,
                                   nullptr, nullptr),
                      s.stream);
        coefficients(count / row);
      }
      emit(nuslerp_step(ElementwiseKind::pair_blend, along, first, count, as<float>(s.stack), base, at,
                        as<double>(coef), nullptr),
           first);
    }
    return;
  }
  if (multislerp || o.method == ClassicMethod::karcher) {  // one pass for the Gram sums, the coefficients decided on the host
    float* base = src.base ? as<float>(s.base) : nullptr;
    SphereSums sums = sphere_sums(o, name, numel, s.n, base != nullptr);
    const std::vector<double> itself{1.0};  // one vector: the model itself (as mergekit)
    if (sums.vectors() > 1) {
      const DeviceBuffer lanes = filled(b, sums.lane_count() * 8, 0, s.stream);
      for (i64 first = 0; first < numel; first += piece) {
        if (!one_piece) read(first);
        b.elementwise(sums.step(first, count, as<float>(s.stack), base, as<double>(lanes)), s.stream);
      }
      fetch(b, s.stream, lanes, sums.lanes());
      sums.end_pass();
    }
    const auto& coef = sums.vectors() > 1 ? sums.table() : itself;
    const DeviceBuffer table = b.allocate(coef.size() * 8);
    b.upload(table.data(), coef.data(), coef.size() * 8, s.stream);
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      emit(sums.blend(count, as<float>(s.stack), base, as<double>(table), nullptr), first);
    }
    return;
  }
  if (o.method == ClassicMethod::passthrough) {  // the model's values, scaled
    const double scale = task_parameters(o, 1).scales[0];
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      emit(passthrough_step(task(0), count, scale, nullptr), first);
    }
    return;
  }
  if (stock) {  // one angle for the tensor (a pass for its sums), or one per row
    const auto models = as<float>(s.stack);
    double t = 0;
    DeviceBuffer row_t;
    if (row == 0) {
      StockSums sums(numel, s.n);
      const DeviceBuffer lanes = filled(b, sums.lane_count() * 8, 0, s.stream);
      for (i64 first = 0; first < numel; first += piece) {
        if (!one_piece) read(first);
        b.elementwise(sums.step(first, count, as<float>(s.base), models, as<double>(lanes)), s.stream);
      }
      fetch(b, s.stream, lanes, sums.lanes());
      t = sums.t();
    } else {
      row_t = b.allocate(static_cast<std::size_t>(piece / row) * 8);
    }
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      if (row > 0)
        b.elementwise(stock_step(ElementwiseKind::stock_rows, static_cast<int>(n), count, as<float>(s.base), models, 0,
                                 row, as<double>(row_t), nullptr),
                      s.stream);
      emit(stock_step(ElementwiseKind::stock_blend, static_cast<int>(n), count, as<float>(s.base), models, t, row,
                      row > 0 ? as<double>(row_t) : nullptr, nullptr),
           first);
    }
    return;
  }

  if (fusion) {  // the rows' divergences, four radix passes for the quartiles (host decides), the blend
    if (!src.base) throw usage_error("tensor '" + name + "': --method arcee_fusion needs the base's tensor");
    const DeviceBuffer kl = b.allocate(static_cast<std::size_t>(numel / row) * 8);  // the tensor's rows
    ElementwiseStep step;
    step.base = as<float>(s.base);
    step.row = row;
    const auto at = [&](i64 first) {
      step.first = first;
      step.count = count;
      step.x = task(0);
      step.row_t = as<double>(kl) + first / row;
    };
    const auto ranks = fusion_ranks(numel);
    RankSelect select(ranks);
    // Pass 0: one histogram of the high digits; then one per quartile, of the importances under
    // its digits so far.
    const DeviceBuffer histograms = b.allocate(ranks.size() * 65536 * 8);
    std::vector<std::uint64_t> host(ranks.size() * 65536);
    while (select.wants_pass()) {
      const int digit = select.digit();
      const std::size_t count_of = digit == 0 ? 1 : ranks.size();
      b.fill(histograms.data(), 0, count_of * 65536 * 8, s.stream);
      for (i64 first = 0; first < numel; first += piece) {
        if (!one_piece) read(first);
        at(first);
        if (digit == 0) {
          step.kind = ElementwiseKind::fusion_rows;
          b.elementwise(step, s.stream);
        }
        step.kind = ElementwiseKind::fusion_histogram;
        step.multi_pass = digit;
        for (std::size_t r = 0; r < count_of; ++r) {
          step.histogram = as<std::uint64_t>(histograms) + r * 65536;
          step.prefix = digit == 0 ? 0 : select.prefix(r);
          b.elementwise(step, s.stream);
        }
      }
      b.download(host.data(), histograms.data(), count_of * 65536 * 8, s.stream);  // one wait a pass
      b.synchronize(s.stream);
      for (std::size_t r = 0; r < count_of; ++r)
        select.add_histogram(r, std::span<const std::uint64_t>(host).subspan(r * 65536, 65536));
      select.end_pass();
    }
    step.kind = ElementwiseKind::fusion_blend;
    step.threshold = fusion_threshold(select.value(0), select.value(1), select.value(2));
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      at(first);
      emit(step, first);
    }
    return;
  }

  if (o.method == ClassicMethod::ram || o.method == ClassicMethod::ramplus_tl) {
    // ramplus_tl: a pass counting each task's shared and unique changes, its factors from them
    // on the host; then every element merged (ram: every factor 1).
    const RamParameters p = ram_parameters(o, name);
    ElementwiseStep step;
    step.n = static_cast<int>(n);
    step.x = as<float>(s.stack);
    step.base = as<float>(s.base);
    step.epsilon = p.epsilon;
    std::vector<double> scales(s.n, 1.0);
    if (p.plus) {
      const DeviceBuffer counts = filled(b, 2 * s.n * 8, 0, s.stream);
      step.kind = ElementwiseKind::ram_counts;
      step.counts = as<std::uint64_t>(counts);
      for (i64 first = 0; first < numel; first += piece) {
        if (!one_piece) read(first);
        step.first = first;
        step.count = count;
        b.elementwise(step, s.stream);
      }
      std::vector<std::uint64_t> host(2 * s.n);
      fetch(b, s.stream, counts, host);
      for (std::size_t t = 0; t < s.n; ++t)
        scales[t] = ram_scale(p, static_cast<double>(host[2 * t]), static_cast<double>(host[2 * t + 1]));
    }
    b.upload(s.weights.data(), scales.data(), s.n * 8, s.stream);
    b.synchronize(s.stream);  // the factors are this frame's memory
    step.kind = ElementwiseKind::ram_blend;
    step.weights = as<double>(s.weights);
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      emit(step, first);
    }
    return;
  }

  const auto recipe = make_recipe(o, Convention::mergekit);
  const auto params = task_parameters(o, s.n);
  ElementwiseStep combine;
  combine.kind = ElementwiseKind::combine;
  combine.n = static_cast<int>(n);
  combine.weights = as<double>(s.weights);
  combine.weight_sum = combine_weight_sum(params.weights);
  combine.lambda = recipe.lambda;
  combine.elect = recipe.elect_sign;
  combine.elect_by_count = recipe.election == SignElection::count;
  combine.elect_on_weighted = recipe.elect_on_weighted;
  combine.normalize = recipe.normalize;
  combine.has_base = src.base != nullptr;
  combine.base = as<float>(s.base);
  combine.x = as<float>(s.stack);

  if (recipe.select_by_variance) {  // SCE (sce.cpp's passes, its decisions on the host)
    const double topk = o.select_topk.value_or(1.0);
    const i64 blocks = (numel + kernels::kStatBlock - 1) / kernels::kStatBlock;
    ElementwiseStep st;
    st.n = static_cast<int>(n);
    st.x = as<float>(s.stack);
    const auto pass = [&](ElementwiseStep step) {
      for (i64 first = 0; first < numel; first += piece) {
        if (!one_piece) read(first);
        step.first = first;
        step.count = count;
        b.elementwise(step, s.stream);
      }
    };
    // The selection: the variance at rank numel − keep by four radix passes, then its ties per
    // block, walked in index order (tie_allowances).
    bool keep_all = topk >= 1, zero_all = false;
    std::vector<i64> left;
    if (!keep_all) {
      RankSelect select;
      const DeviceBuffer histogram = b.allocate(65536 * 8), nonzero = filled(b, 8, 0, s.stream);
      std::vector<std::uint64_t> host(65536), counted(1);
      i64 keep = 0;
      st.kind = ElementwiseKind::sce_lanes;
      st.histogram = as<std::uint64_t>(histogram);
      st.counts = as<std::uint64_t>(nonzero);
      while (select.wants_pass()) {
        b.fill(histogram.data(), 0, 65536 * 8, s.stream);
        st.sce_pass = select.digit();
        st.prefix = select.digit() == 0 ? 0 : select.prefix(0);
        pass(st);
        fetch(b, s.stream, histogram, host);
        select.add_histogram(0, host);
        if (select.digit() == 0) {
          fetch(b, s.stream, nonzero, counted);
          keep = topk <= 0 ? 0 : static_cast<i64>(static_cast<double>(counted[0]) * topk);
          if (keep <= 0 || keep >= numel) break;  // none or all: nothing to select
          select.ranks({numel - keep});
        }
        select.end_pass();
      }
      keep_all = keep >= numel;
      zero_all = keep <= 0;
      if (!keep_all && !zero_all) {
        st.threshold = select.value(0);
        const DeviceBuffer equal = filled(b, static_cast<std::size_t>(blocks) * 8, 0, s.stream);
        st.sce_pass = 4;
        st.equal[0] = as<std::uint64_t>(equal);
        pass(st);
        std::vector<i64> ties(static_cast<std::size_t>(blocks));
        fetch(b, s.stream, equal, ties);
        left = tie_allowances(ties, keep - (numel - select.below(0) - select.equal(0)));
      }
    }
    const DeviceBuffer allowances = b.allocate(std::max<std::size_t>(left.size(), 1) * 8);
    // Zeroes the elements the piece at `first` does not keep, in every task (the tensor's
    // allowances from the start at its first piece).
    const auto select = [&](i64 first) {
      if (keep_all) return;
      ElementwiseStep sel = st;
      sel.first = first;
      sel.count = count;
      sel.zero_all = zero_all;
      if (!zero_all) {
        if (first == 0) b.upload(allowances.data(), left.data(), left.size() * 8, s.stream);
        sel.rules = 1;
        sel.chunk_ties[0] = as<i64>(s.ties[0]);
        sel.chunk_left[0] = as<i64>(s.allowances[0]);
        sel.left[0] = as<i64>(allowances);
        for (const auto kind : {ElementwiseKind::sce_ties, ElementwiseKind::tie_scan}) {
          sel.kind = kind;
          b.elementwise(sel, s.stream);
        }
      }
      sel.kind = ElementwiseKind::sce_select;
      b.elementwise(sel, s.stream);
    };
    // The weights: each task's Σ x² over the kept elements, in the blocks' lanes.
    const DeviceBuffer lanes = filled(b, static_cast<std::size_t>(n * blocks * kernels::kStatLanes) * 8, 0, s.stream);
    ElementwiseStep energy = st;
    energy.kind = ElementwiseKind::sce_lanes;
    energy.sce_pass = 5;
    energy.stock = as<double>(lanes);
    energy.stock_stride = blocks * kernels::kStatLanes;
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      select(first);
      energy.first = first;
      energy.count = count;
      b.elementwise(energy, s.stream);
    }
    std::vector<double> host_lanes(static_cast<std::size_t>(n * blocks * kernels::kStatLanes)), squares;
    fetch(b, s.stream, lanes, host_lanes);
    for (i64 t = 0; t < n; ++t) squares.push_back(kernels::lanes_total(host_lanes.data() + t * energy.stock_stride, blocks));
    const auto weights = energy_weights(squares, numel);
    b.upload(s.weights.data(), weights.data(), s.n * 8, s.stream);
    b.synchronize(s.stream);  // the weights are this frame's memory
    combine.weight_sum = combine_weight_sum(weights);
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) {  // a tensor in one piece was selected in the energy pass
        read(first);
        select(first);
      }
      emit(combine, first);
    }
    return;
  }

  const CombineInput ci{{}, n, numel, params.weights, params.densities, name, o.seed, params.gammas, params.epsilons, shape};
  std::vector<Thinning> thinning;
  thinning.reserve(s.n);
  for (i64 t = 0; t < n; ++t) thinning.emplace_back(thinning_spec(recipe, ci, t), numel);
  if (della && s.keep.bytes() < static_cast<std::size_t>(piece)) s.keep = b.allocate(static_cast<std::size_t>(s.piece));
  std::vector<ThinningOnBackend> on;
  on.reserve(s.n);
  for (auto& th : thinning) on.emplace_back(th, b, s.stream, as<unsigned char>(s.keep));
  b.upload(s.weights.data(), params.weights.data(), s.n * 8, s.stream);
  b.synchronize(s.stream);  // the weights are the caller's memory
  const auto wanting = [&] {
    return std::any_of(thinning.begin(), thinning.end(), [](const Thinning& th) { return th.wants_pass(); });
  };
  while (wanting()) {
    std::vector<bool> wants(s.n);
    for (std::size_t t = 0; t < s.n; ++t) wants[t] = thinning[t].wants_pass();
    for (i64 first = 0; first < numel; first += piece) {
      if (!one_piece) read(first);
      for (i64 t = 0; t < n; ++t)
        if (wants[t]) on[t].observe(task(t), first, count);
    }
    for (std::size_t t = 0; t < s.n; ++t)
      if (wants[t]) on[t].end_pass();
  }
  for (i64 first = 0; first < numel; first += piece) {
    if (!one_piece) read(first);
    for (i64 t = 0; t < n; ++t) on[t].apply(task(t), first, count, s.ties, s.allowances);
    emit(combine, first);
  }
}

}  // namespace revmerge
