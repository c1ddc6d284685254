// The element-wise full-model merges on a backend (combine_on_backend.hpp): the CPU merge's
// passes (merge_in_pieces with CombinePieces) step for step, each step a kernels/elementwise.hpp
// loop on the backend's stream. Here: the buffers, a tensor's setup and the choice of method,
// its pieces read and handed over; the methods are tensor_on_backend.cpp's.
#include "methods/classic/combine_on_backend.hpp"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "backend/backend.hpp"
#include "core/interrupt.hpp"
#include "kernels/elementwise.hpp"
#include "methods/classic/backend_arrays.hpp"
#include "methods/classic/combine.hpp"
#include "methods/classic/tensor_on_backend.hpp"
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
  if (numel == 0) {
    sink(0, {});
    return;
  }
  TensorOnBackend t{s, b, o, name, shape, src, sink, numel, n, threads, along, della, row,
                    std::move(inputs), std::move(where), widen, piece, chunk};
  t.one_piece = piece >= numel;
  if (t.one_piece) t.read(0);
  if (two_models) return t.blend_two_models();
  if (nuslerp) return t.nuslerp();
  if (multislerp || o.method == ClassicMethod::karcher) return t.sphere();
  if (o.method == ClassicMethod::passthrough) return t.passthrough();
  if (stock) return t.stock();
  if (fusion) return t.fusion();
  if (o.method == ClassicMethod::ram || o.method == ClassicMethod::ramplus_tl) return t.ram();
  t.combine_tasks();
}

// The piece's bytes staged chunk by chunk through the two slots (the host filling one while the
// other uploads), then widened and checked on the device.
void TensorOnBackend::read(i64 first) {
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
}

// Downloaded chunk by chunk through the two slots: the writer takes one chunk while the next is
// on the bus.
void TensorOnBackend::emit(ElementwiseStep step, i64 first) {
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
}

}  // namespace revmerge
