// The piece-by-piece driver of full-model merges (piece_merge.hpp).
#include "methods/classic/piece_merge.hpp"

#include <algorithm>
#include <optional>

#include "core/interrupt.hpp"
#include "core/memory_info.hpp"
#include "methods/classic/write_behind.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

// What the process holds besides the pieces: its code and libraries, the open files' headers,
// the writer's parts of copied tensors.
constexpr std::uint64_t kReserve = std::uint64_t{96} << 20;

// Of a merger's statistics (PieceMerger::held_bytes), what the reserve holds: a tensor's
// histograms on a few threads (TIES over 3 tasks on one: 4.5 MiB). A merge of a tiny model holds
// 18 MB in all; the 7b set's TIES merge 98 MB under a 1.5 GiB budget, 28 MiB of them pieces.
// What a merger holds beyond this comes out of the pieces' room.
constexpr std::uint64_t kHeldInReserve = std::uint64_t{8} << 20;

// Of a merger's statistics, what the reserve does not hold.
std::uint64_t beyond_reserve(std::uint64_t held) { return held > kHeldInReserve ? held - kHeldInReserve : 0; }

// Elements of a piece at most: its f32 copies (every input and the output, 1 MiB each) fit in
// the last-level cache. Smaller pieces cost more in each step's thread start and join than
// they save (2^16: 2.5× slower).
constexpr i64 kCachePiece = i64{1} << 18;
// Elements of a piece at most for a merger that works in runs: its runs are merged in cache
// whatever the piece's size, and larger pieces are larger writes (2 MiB of bf16; the writer's
// time in pwrite on the 2-layer 7b set fell from ~2.3 s to ~1.1-1.6 s under strace with 2^21).
// Medians of five runs alternated there (2 cores): task arithmetic 1.83 → 1.61 s, SLERP 1.78 →
// 1.53 s against 2^18; 2^21 was no better than 2^20.
constexpr i64 kRunsPiece = i64{1} << 20;
// The writer's queue of converted pieces (ModelOutputOptions::write_behind_bytes): what is
// written while the next tensor's first pass reads (SLERP's on an MLP tensor of the 7b set, ~25
// ms, is ~35 MB of the disk's writes here).
constexpr std::uint64_t kWriteBehind = std::uint64_t{64} << 20;
constexpr std::uint64_t kWriteBehindMin = std::uint64_t{8} << 20;
// Elements read between two drops of the inputs' pages from the resident set (8 MiB of each
// 16-bit input mapped at most).
constexpr i64 kDropElements = i64{1} << 22;

}  // namespace

RunInputs whole_run(TensorInputs& in) {
  const auto count = static_cast<i64>(in.count);
  return {in.first, count, count, in.n, in.base.empty() ? nullptr : in.base.data(), in.stacked.data()};
}

int run_threads(int threads, i64 numel) {
  const i64 cells = (numel + PieceMerger::kRunAlign - 1) / PieceMerger::kRunAlign;
  return static_cast<int>(std::clamp<i64>(cells, 1, std::max(threads, 1)));
}

void run_host_step(const kernels::ElementwiseStep& step, int threads) {
  const auto count = kernels::step_indices(step);
  kernels::with_elementwise_body(step, [&](const auto& body) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i64 i = 0; i < count; ++i) body(i);
  });
}

std::unique_ptr<PieceMerger> piece_merger(const ClassicMergeOptions& o, const std::string& name,
                                          const std::vector<i64>& shape, std::size_t n, bool has_base) {
  std::unique_ptr<PieceMerger> m;
  i64 count = 1;
  for (const auto d : shape) count *= d;
  if (blends_two_models(o.method)) m = two_model_merger(o, name, count);
  else if (o.method == ClassicMethod::model_stock) m = model_stock_merger(o, shape, n);
  else if (o.method == ClassicMethod::passthrough) m = passthrough_merger(o);
  else if (is_spherical(o.method)) m = spherical_merger(o, name, shape, n, has_base);
  else if (is_selective(o.method)) m = selective_merger(o, name, shape, n);
  else if (is_elementwise(o.method)) m = combine_merger(o, name, shape, n, has_base);
  if (!m) throw std::logic_error("piece_merger: no merger for --method " + to_string(o.method));
  return m;
}

PiecePlan plan_pieces(std::size_t n, bool has_base, std::uint64_t budget, bool budget_given) {
  PiecePlan p;
  p.budget = budget_given ? budget : 0;
  if (budget_given && budget < kReserve + (std::uint64_t{1} << 20))
    throw usage_error("--memory-budget " + format_bytes(budget) + ": a full-model merge needs at least " +
                      format_bytes(kReserve + (std::uint64_t{1} << 20)) + " (" + format_bytes(kReserve) +
                      " for the process itself, the rest for pieces of the tensors)");
  if (!budget_given) budget = host_memory_available() / 2;
  // f32 inputs and output, the output's conversion to 16 bits, one input's mapped bytes (each
  // input's pages are dropped once its piece is read; pieces under kDropElements leave at most
  // kDropElements of each input mapped, inside kReserve).
  p.bytes_per_element = 4 * (n + (has_base ? 1 : 0) + 1) + 4 + 4;
  std::uint64_t room = budget > kReserve ? budget - kReserve : 0;
  // The writer's queue takes an eighth of the room, up to kWriteBehind; under kWriteBehindMin
  // (a budget near the least) the pieces are written in line.
  const auto queue = std::min(room / 8, kWriteBehind);
  p.write_behind_bytes = queue >= kWriteBehindMin ? queue : 0;
  room -= p.write_behind_bytes;
  p.max_elements = static_cast<i64>(std::max<std::uint64_t>(room / p.bytes_per_element, 1));
  return p;
}

std::uint64_t copy_piece_bytes(const PiecePlan& plan) {
  const std::uint64_t cap = std::uint64_t{64} << 20;
  return plan.budget == 0 ? cap : std::clamp<std::uint64_t>(plan.budget / 16, std::uint64_t{1} << 20, cap);
}

void check_fits(const PiecePlan& plan, const PieceMerger& merger, const std::string& method,
                const std::string& tensor, i64 numel, int threads) {
  if (plan.budget == 0) return;  // no budget given: a piece at least as large as the merger needs
  const auto per = plan.bytes_per_element + merger.extra_bytes_per_element();
  const i64 smallest = std::min(std::max<i64>(merger.granule(), 1), std::max<i64>(numel, 1));
  const auto held = merger.held_bytes(run_threads(threads, numel));
  const std::uint64_t need =
      static_cast<std::uint64_t>(smallest) * per + beyond_reserve(held) + kReserve + plan.write_behind_bytes;
  if (need <= plan.budget) return;
  const bool whole = smallest >= numel;
  const std::string how = whole ? " whole" : smallest > 1 ? " in rows of " + std::to_string(smallest) + " elements" : "";
  const std::string statistics =
      held > kHeldInReserve ? " and its statistics (" + format_bytes(held) + " on " +
                                  std::to_string(run_threads(threads, numel)) + " threads)"
                            : "";
  throw usage_error("--memory-budget " + format_bytes(plan.budget) + ": --method " + method + " needs tensor '" +
                    tensor + "'" + how + ", about " + format_bytes(need) + " with every input" + statistics +
                    "; raise the budget to at least that");
}

void merge_in_pieces(PieceMerger& merger, const std::string& name, const std::vector<i64>& shape,
                     const TensorSources& src, const PiecePlan& plan, TensorInputs& in,
                     FloatBuffer& out,
                     const std::function<void(std::uint64_t, std::span<const float>)>& sink, int threads) {
  i64 numel = 1;
  for (const auto d : shape) numel *= d;
  const i64 granule = std::max<i64>(merger.granule(), 1);
  const auto per = plan.bytes_per_element + merger.extra_bytes_per_element();
  // The pieces get what the merger's statistics leave of the plan's room.
  const auto room = static_cast<std::uint64_t>(plan.max_elements) * plan.bytes_per_element;
  // (Without a budget the room is half the memory available, far above them.)
  const auto held = plan.budget != 0 ? beyond_reserve(merger.held_bytes(run_threads(threads, numel))) : 0;
  const i64 fit = std::max<i64>(static_cast<i64>((room > held ? room - held : 0) / per), 1);
  i64 piece = std::min(numel, std::max(granule, fit / granule * granule));
  // Pieces that stay in cache keep the f32 copies of the inputs and the output out of memory:
  // a pass over them reads the inputs' 16-bit bytes again, no more than reading a whole
  // tensor's f32 copy back from memory would cost, and the output goes to the page cache while
  // it is in cache. Measured on the 2-layer 7b set (2 cores): task arithmetic 5.6 → 1.8–2.5 s,
  // DARE-TIES 9.2 → 6.0 s, peak memory 1.3 GB → 70 MB, the same bytes.
  const i64 small = merger.works_in_runs() ? kRunsPiece : kCachePiece;
  if (!merger.whole_tensor_saves_work()) piece = std::min(piece, std::max(granule, small / granule * granule));
  in.name = name;
  in.shape = shape;
  in.n = src.models.size();
  const bool runs = merger.works_in_runs();
  const i64 run_length = runs ? merger.run_elements() : PieceMerger::kRunAlign;
  const bool read_once = piece >= numel && !runs;
  // A merger that reads the tensor again after its passes keeps the inputs' pages mapped from
  // its first pass to its last where the budget's room holds them beside the pieces (the 7b
  // embedding's four bf16 inputs, 1.05 GB, under a 1.5 GiB budget): the later passes then read
  // them without a page fault, and each page is unmapped once. They are the page cache's own
  // pages, counted in the resident set. Measured on the 2-layer 7b set (2 cores), model_stock:
  // 2.2 → 1.7 s with every page kept; the same bytes.
  std::uint64_t mapped = src.base ? src.base->info->nbytes() : 0;
  for (const auto* m : src.models) mapped += m->info->nbytes();
  const std::uint64_t pieces_bytes = static_cast<std::uint64_t>(piece) * per;
  bool holding = merger.wants_pass() && !read_once && pieces_bytes + held + mapped <= room;  // until the last pass
  // Small pieces leave their inputs' pages mapped until kDropElements have been read: one
  // madvise per piece would cost each piece a TLB shootdown on every core.
  const bool drop_each = piece >= kDropElements;
  i64 dropped_to = 0;
  const auto drop_read = [&](i64 end) {
    const auto from = static_cast<std::uint64_t>(dropped_to), count = static_cast<std::uint64_t>(end - dropped_to);
    if (src.base) src.base->file->evict_part(*src.base->info, from, count);
    for (const auto* m : src.models) m->file->evict_part(*m->info, from, count);
    dropped_to = end;
  };
  std::vector<PartToRead> parts;
  // Reads the piece at `first`: into `in`, or (a merger in runs) each run given to `then` as
  // the RunInputs of its values (see read_finite_parts) once read.
  const auto read = [&](i64 first, const std::function<void(i64, const RunInputs&)>& then) {
    throw_if_interrupted("merge");  // a 70B embedding is many pieces: Ctrl-C need not wait for all
    in.first = first;
    in.count = static_cast<std::size_t>(std::min(piece, numel - first));
    in.base.resize(src.base && !then ? in.count : 0);
    in.stacked.resize(then ? 0 : in.n * in.count);
    parts.clear();
    const bool has_base = src.base != nullptr;
    if (has_base) parts.push_back({src.base, &src.base_where, then ? nullptr : in.base.data(), -1});
    const int minus = has_base && merger.task_vectors() ? 0 : -1;
    for (std::size_t t = 0; t < in.n; ++t)
      parts.push_back({src.models[t], &src.model_where[t], then ? nullptr : in.model(t).data(), minus});
    RunValues values;
    if (then)
      values = [&](i64 begin, i64 end, float* v) {
        const RunInputs run{first + begin, end - begin, run_length, in.n, has_base ? v : nullptr,
                            has_base ? v + run_length : v};
        then(begin, run);
      };
    read_finite_parts(parts, first, in.count, threads, drop_each && !holding, run_length, values);
    if (drop_each || holding) return;
    const i64 end = first + static_cast<i64>(in.count);
    if (first < dropped_to) dropped_to = first;  // the next pass
    if (end - dropped_to >= kDropElements || end == numel) drop_read(end);
  };
  // A merger that works in runs merges each run as it is read (one parallel loop per piece and
  // pass, the run in cache: task arithmetic and SLERP spent more time waiting between their
  // steps' loops and reading the piece back from memory than computing). Otherwise a tensor in
  // one piece is read once for all passes (observe leaves the piece as it is).
  if (read_once) read(0, {});
  if (numel == 0) {  // nothing to merge; the writer still takes the empty tensor
    out.clear();
    sink(0, out);
    return;
  }
  while (merger.wants_pass()) {
    if (runs) merger.start_runs(run_threads(threads, numel));
    for (i64 first = 0; first < numel; first += piece) {
      if (runs) {
        read(first, [&](i64, const RunInputs& run) { merger.observe_run(run); });
        continue;
      }
      if (!read_once) read(first, {});
      merger.observe(in, threads);
    }
    merger.end_pass();
  }
  // The pieces of a cut tensor are written behind the merge, on a thread of its own that mostly
  // waits for the disk (the writer's whole blocks go around the page cache): measured on the
  // 2-layer 7b set (2 cores), task arithmetic 2.1–3.0 s → 1.7–2.6 s, 4.1–5.4 s of CPU → 3.3–5.0
  // s, the same bytes. Giving the writer one of the merge's threads was slower (2.2–2.7 s): the
  // merge then ran on one. A whole tensor (its piece is as large as the budget allows) writes
  // in line.
  // The last pass unmaps what it has read as it goes (drop_each: each piece's own pages).
  holding = false;
  std::optional<WriteBehind> behind;
  if (piece < numel && piece <= small) behind.emplace(sink);
  for (i64 first = 0; first < numel; first += piece) {
    auto& merged = behind ? behind->next() : out;
    merged.resize(static_cast<std::size_t>(std::min(piece, numel - first)));
    if (runs) {
      read(first, [&](i64 begin, const RunInputs& run) {
        merger.produce_run(run, std::span(merged).subspan(static_cast<std::size_t>(begin), static_cast<std::size_t>(run.count)));
      });
    } else {
      if (!read_once) read(first, {});
      merger.produce(in, merged, threads);
    }
    if (behind) behind->submit(static_cast<std::uint64_t>(first));
    else sink(static_cast<std::uint64_t>(first), merged);
  }
  if (behind) behind->finish();
}

}  // namespace revmerge
