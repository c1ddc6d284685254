// The batched PT-SVD (batched_pt_svd.hpp) on the backend's f64 group. Layout: Δ row-major
// out × in is M = Δᵀ column-major m × n (m = in, n = out), BLAS's own order; every batch is
// strided, task t's matrix at t · stride.
#include "methods/lowrank/batched_pt_svd.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>

#include "backend/caching_pool.hpp"
#include "methods/lowrank/batched_pt_svd_parts.hpp"
#include "revmerge/error.hpp"

namespace revmerge {

using i64 = std::int64_t;

using batched_pt_svd_parts::doubles;
using batched_pt_svd_parts::r_of_rounds;

namespace {

// Declared after the buffers a stream's queued work uses, so it runs before they go back to the
// pool: when an exception unwinds, waits for that work first.
class WaitOnUnwind {
 public:
  WaitOnUnwind(Backend& be, Stream s) : be_(be), s_(s) {}
  ~WaitOnUnwind() {
    if (std::uncaught_exceptions() > entered_) try {
        be_.synchronize(s_);
      } catch (...) {  // the exception in flight is the one to report
      }
  }
  WaitOnUnwind(const WaitOnUnwind&) = delete;
  WaitOnUnwind& operator=(const WaitOnUnwind&) = delete;

 private:
  Backend& be_;
  Stream s_;
  int entered_ = std::uncaught_exceptions();
};

// Each task's ‖Δ‖² and first non-finite element as downloaded (~0: none) into its fresh result;
// whether any task has a non-finite element.
bool take_norms(const std::vector<double>& norms, const std::vector<std::uint64_t>& bad,
                std::span<DeltaSvd> results) {
  bool any_bad = false;
  for (std::size_t t = 0; t < results.size(); ++t) {
    results[t] = {};
    results[t].norm_sq = norms[t];
    if (bad[t] != ~std::uint64_t{0}) {
      results[t].nonfinite_at = static_cast<i64>(bad[t]);
      any_bad = true;
    }
  }
  return any_bad;
}

}  // namespace

BatchedPtSvd::BatchedPtSvd(Backend& backend)
    : be_(backend), stream_(backend.create_stream()), copy_(backend.create_stream()) {}

BatchedPtSvd::~BatchedPtSvd() {
  try {
    be_.synchronize(copy_);
    be_.synchronize(stream_);
  } catch (...) {  // a failure was reported by the run that queued the work
  }
}

void BatchedPtSvd::gemm(Op op_a, i64 rows, i64 cols, i64 inner, const double* a, i64 lda,
                        i64 stride_a, const double* b, i64 ldb, i64 stride_b, double* c, i64 ldc,
                        i64 stride_c, i64 batch) {
  be_.gemm_f64(op_a, rows, cols, inner, a, lda, stride_a, b, ldb, stride_b, c, ldc, stride_c,
               batch, stream_);
}

void BatchedPtSvd::to_host(void* dst, const void* src, std::size_t bytes) {
  be_.download(dst, src, bytes, stream_);
}

void BatchedPtSvd::upload_weight(void* dst, const RawWeight& w, std::size_t count, Staging& staging,
                                 const Event* dst_free) {
  const std::size_t bytes = count * dtype_size(w.dtype);
  if (be_.shares_host_memory()) {  // the CPU: one copy, straight from the file's pages
    be_.upload(dst, w.data, bytes, stream_);
    return;
  }
  const int i = staging.next;
  if (staging.uploaded[i].handle()) be_.synchronize_event(staging.uploaded[i]);  // its last upload ran
  // Filled by all host threads, a few MiB each: the file's pages fault in in parallel.
  constexpr std::size_t kChunk = std::size_t{4} << 20;
  auto* out = static_cast<std::byte*>(staging.buffer[i].data());
  const auto chunks = static_cast<i64>((bytes + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(dynamic)
  for (i64 c = 0; c < chunks; ++c) {
    const std::size_t at = static_cast<std::size_t>(c) * kChunk;
    std::memcpy(out + at, w.data + at, std::min(kChunk, bytes - at));
  }
  if (dst_free && dst_free->handle()) be_.wait_event(copy_, *dst_free);  // nothing reads dst any more
  be_.upload(dst, out, bytes, copy_);
  staging.uploaded[i] = be_.record_event(copy_);
  be_.wait_event(stream_, staging.uploaded[i]);  // the compute that reads dst comes after it
  staging.next = 1 - i;
}

// Δ_t, ‖Δ_t‖² and the first non-finite element of each task, one fine-tune's bytes in backend
// memory at a time; then Ω. Nothing waits.
void BatchedPtSvd::form_deltas(Batch& b, const DeviceBuffer& base_raw, DType base_dtype,
                               std::span<const RawWeight> fine_tunes, const Shape& s,
                               const RandomizedSvdOptions& o, Staging& staging) {
  const i64 T = s.tasks, mn = s.m * s.n;
  const auto sizes = s.blocks();
  b.ft_raw[0] = be_.allocate(sizes[1]);
  if (T > 1) b.ft_raw[1] = be_.allocate(sizes[13]);
  b.delta = be_.allocate(sizes[2]);
  b.scalars = be_.allocate(sizes[3]);
  auto* delta = static_cast<double*>(b.delta.data());
  const Scalars sc(b.scalars, T);
  const std::vector<std::uint64_t> none(static_cast<std::size_t>(T), ~std::uint64_t{0});
  const std::vector<int> held(static_cast<std::size_t>(T), 1);
  be_.upload(sc.bad, none.data(), none.size() * sizeof(std::uint64_t), stream_);
  be_.upload(sc.held, held.data(), held.size() * sizeof(int), stream_);
  for (i64 t = 0; t < T; ++t) {
    const auto& f = fine_tunes[t];
    const int j = static_cast<int>(t % 2);
    upload_weight(b.ft_raw[j].data(), f, static_cast<std::size_t>(mn), staging, &b.consumed[j]);
    be_.delta_f64(b.ft_raw[j].data(), f.dtype, base_raw.data(), base_dtype, delta + t * mn, mn, sc.bad + t,
                  stream_);
    if (!be_.shares_host_memory()) b.consumed[j] = be_.record_event(stream_);
  }
  be_.sum_squares_f64(delta, mn, T, sc.norms, stream_);
  b.omega = be_.allocate(sizes[4]);
  b.y = be_.allocate(sizes[5]);
  b.w = be_.allocate(sizes[6]);
  b.z = be_.allocate(sizes[7]);
  b.factors = be_.allocate(sizes[8]);
  be_.gaussian_f64(static_cast<double*>(b.omega.data()), s.n * s.l, o.seed, o.stream, stream_);  // Ω, n × l
}

// The subspace iteration: Y = M Ω, then q times Z = Mᵀ Y, Y = M Z, each product
// re-orthonormalised by `orth`; the first multiply's Ω is shared (stride 0). Leaves Q in b.y,
// Bᵀ = Mᵀ Q in b.z and ‖QᵀM‖² in the captured scalars (Bᵀ not yet orthonormalised).
template <class Orth>
void BatchedPtSvd::subspace_iteration(Batch& b, const Shape& s, const RandomizedSvdOptions& o, Orth orth) {
  const i64 T = s.tasks, m = s.m, n = s.n, l = s.l, mn = m * n;
  const auto* delta = static_cast<const double*>(b.delta.data());
  auto* y = static_cast<double*>(b.y.data());
  auto* z = static_cast<double*>(b.z.data());
  const double* sketch = static_cast<const double*>(b.omega.data());
  i64 sketch_stride = 0;
  for (int it = 0; it < o.power_iterations; ++it) {
    gemm(Op::none, m, l, n, delta, m, mn, sketch, n, sketch_stride, y, m, m * l, T);  // Y = M Z
    orth(y, m);
    gemm(Op::transpose, n, l, m, delta, m, mn, y, m, m * l, z, n, n * l, T);  // Z = Mᵀ Y
    orth(z, n);
    sketch = z;
    sketch_stride = n * l;
  }
  gemm(Op::none, m, l, n, delta, m, mn, sketch, n, sketch_stride, y, m, m * l, T);
  orth(y, m);                                                                 // Q
  gemm(Op::transpose, n, l, m, delta, m, mn, y, m, m * l, z, n, n * l, T);  // Bᵀ = Mᵀ Q
  be_.sum_squares_f64(z, n * l, T, Scalars(b.scalars, T).captured, stream_);  // ‖QᵀM‖²
}

// From Bᵀ = Q₂ R (Q₂ in b.z) and each task's R on the host: B = Rᵀ Q₂ᵀ, and Rᵀ = U_R S V_Rᵀ
// (LAPACK, l × l, on the host) gives B = U_R S (Q₂ V_R)ᵀ: U = Q U_R and V = Q₂ V_R, their first k
// columns, on the device — into the stacks, or back to the host. Tasks not in `tasks` are left
// as they are. Ends with the stream synchronized.
void BatchedPtSvd::finish_factors(Batch& b, const Shape& s, const std::vector<double>& r,
                                  std::span<DeltaSvd> results, const std::vector<char>& tasks,
                                  const Stacks* stacks) {
  const i64 T = s.tasks, m = s.m, n = s.n, l = s.l, k = s.k;
  const auto sizes = s.blocks();
  std::vector<double> small(static_cast<std::size_t>(2 * T * l * k + T * k), 0.0),
      rt(static_cast<std::size_t>(l * l));
  double* ur = small.data();
  double* vr = ur + T * l * k;
  double* sv = vr + T * l * k;
  for (i64 t = 0; t < T; ++t) {
    if (!tasks[t]) continue;
    for (i64 j = 0; j < l; ++j)
      for (i64 i = 0; i < l; ++i) rt[j * l + i] = r[t * l * l + i * l + j];
    auto& svd = results[t].svd;
    svd.k = k;
    svd.s.resize(static_cast<std::size_t>(k));
    leading_svd(rt, l, k, ur + t * l * k, svd.s.data(), vr + t * l * k);
    std::copy(svd.s.begin(), svd.s.end(), sv + t * k);
  }
  b.small_factors = be_.allocate(sizes[10]);
  b.u = be_.allocate(sizes[11]);
  b.v = be_.allocate(sizes[12]);
  auto* d_ur = static_cast<double*>(b.small_factors.data());
  double* d_vr = d_ur + T * l * k;
  auto* u = static_cast<double*>(b.u.data());
  auto* v = static_cast<double*>(b.v.data());
  be_.upload(d_ur, small.data(), small.size() * sizeof(double), stream_);
  gemm(Op::none, m, k, l, static_cast<const double*>(b.y.data()), m, m * l, d_ur, l, l * k, u, m, m * k, T);
  gemm(Op::none, n, k, l, static_cast<const double*>(b.z.data()), n, n * l, d_vr, l, l * k, v, n, n * k, T);
  if (stacks && stacks->stored_in_by_out) {  // M = Δ: A from V, B from U
    be_.lora_stacks_f64(v, u, d_vr + T * l * k, T, n, m, k, stacks->r, stacks->a, stacks->b, stream_);
  } else if (stacks) {  // the factors stay in backend memory, in the merge's stacks
    be_.lora_stacks_f64(u, v, d_vr + T * l * k, T, m, n, k, stacks->r, stacks->a, stacks->b, stream_);
  } else {
    for (i64 t = 0; t < T; ++t) {
      if (!tasks[t]) continue;
      results[t].svd.u.resize(static_cast<std::size_t>(m * k));
      results[t].svd.v.resize(static_cast<std::size_t>(n * k));
      to_host(results[t].svd.u.data(), u + t * m * k, doubles(m * k));
      to_host(results[t].svd.v.data(), v + t * n * k, doubles(n * k));
    }
  }
  be_.synchronize(stream_);
}

// One batch with no host decision inside: Δ, the whole subspace iteration with CholeskyQR2 at
// every step and its verdicts gathered on the device, then one download (norms, non-finite
// elements, verdicts, captured energies, the last step's factors) before the l × l SVDs on the
// host, and one at the end. Returns the tasks whose CholeskyQR2 failed somewhere: the caller
// redoes each on its own (their factors here, and in the stacks, are meaningless until then).
std::vector<i64> BatchedPtSvd::run_batch(const DeviceBuffer& base_raw, DType base_dtype,
                                         std::span<const RawWeight> fine_tunes, std::span<DeltaSvd> results,
                                         const Shape& s, const RandomizedSvdOptions& o, Staging& staging,
                                         const Stacks* stacks) {
  const i64 T = s.tasks, l = s.l, ll = l * l;
  Batch b;
  const WaitOnUnwind wait(be_, stream_);
  form_deltas(b, base_raw, base_dtype, fine_tunes, s, o, staging);
  const bool solve = s.k > 0 && l > 0;
  if (solve) subspace_iteration(b, s, o, [&](double* x, i64 rows) { orthonormalize_on_device(b, x, s, rows); });
  if (solve) orthonormalize_on_device(b, static_cast<double*>(b.z.data()), s, s.n);  // Bᵀ = Q₂ R
  const Scalars sc(b.scalars, T);
  std::vector<double> h_norms(static_cast<std::size_t>(T)), h_captured(static_cast<std::size_t>(T)),
      h_factors(static_cast<std::size_t>(solve ? 2 * T * ll : 0));
  std::vector<std::uint64_t> h_bad(static_cast<std::size_t>(T));
  std::vector<int> h_held(static_cast<std::size_t>(T));
  to_host(h_norms.data(), sc.norms, doubles(T));
  to_host(h_bad.data(), sc.bad, h_bad.size() * sizeof(std::uint64_t));
  if (solve) {
    to_host(h_captured.data(), sc.captured, doubles(T));
    to_host(h_held.data(), sc.held, h_held.size() * sizeof(int));
    to_host(h_factors.data(), b.factors.data(), doubles(2 * T * ll));
  }
  be_.synchronize(stream_);
  if (take_norms(h_norms, h_bad, results) || !solve) return {};
  std::vector<i64> redo;
  std::vector<char> held(static_cast<std::size_t>(T));
  std::vector<double> r(static_cast<std::size_t>(T * ll), 0.0);
  for (i64 t = 0; t < T; ++t) {
    held[t] = h_held[t] != 0;
    if (!held[t]) {
      redo.push_back(t);
      continue;
    }
    results[t].svd.captured = h_captured[t];
    r_of_rounds(h_factors.data() + t * ll, h_factors.data() + (T + t) * ll, l, r.data() + t * ll);
  }
  if (redo.size() < static_cast<std::size_t>(T)) finish_factors(b, s, r, results, held, stacks);
  return redo;
}

// One batch deciding on the host after every step (orthonormalize): Householder QR where
// CholeskyQR2 does not hold. The path of the tasks run_batch gives back.
void BatchedPtSvd::run_batch_checked(const DeviceBuffer& base_raw, DType base_dtype,
                                     std::span<const RawWeight> fine_tunes, std::span<DeltaSvd> results,
                                     const Shape& s, const RandomizedSvdOptions& o, Staging& staging,
                                     const Stacks* stacks) {
  const i64 T = s.tasks;
  Batch b;
  const WaitOnUnwind wait(be_, stream_);
  form_deltas(b, base_raw, base_dtype, fine_tunes, s, o, staging);
  const Scalars sc(b.scalars, T);
  std::vector<double> h_norms(static_cast<std::size_t>(T));
  std::vector<std::uint64_t> h_bad(static_cast<std::size_t>(T));
  to_host(h_norms.data(), sc.norms, doubles(T));
  to_host(h_bad.data(), sc.bad, h_bad.size() * sizeof(std::uint64_t));
  be_.synchronize(stream_);
  if (take_norms(h_norms, h_bad, results) || s.k <= 0 || s.l <= 0) return;
  subspace_iteration(b, s, o, [&](double* x, i64 rows) { orthonormalize(b, x, s, rows, nullptr); });
  std::vector<double> r;
  orthonormalize(b, static_cast<double*>(b.z.data()), s, s.n, &r);  // Bᵀ = Q₂ R
  std::vector<double> h_captured(static_cast<std::size_t>(T));
  to_host(h_captured.data(), sc.captured, doubles(T));
  finish_factors(b, s, r, results, std::vector<char>(static_cast<std::size_t>(T), 1), stacks);
  for (i64 t = 0; t < T; ++t) results[t].svd.captured = h_captured[t];
}

std::size_t BatchedPtSvd::work_bytes(i64 tasks, i64 in, i64 out, const RandomizedSvdOptions& o,
                                     std::size_t element_bytes) const {
  const i64 small = std::min(in, out);
  const i64 l = std::min(o.rank + std::max<i64>(o.oversampling, 0), small);
  const Shape s{tasks, in, out, l, std::min(o.rank, small), element_bytes};
  std::size_t total = 0;
  for (const auto bytes : s.blocks()) total += pool_size_class(bytes);
  // Householder QR for a matrix CholeskyQR2 does not hold (one at a time).
  return total + be_.householder_qr_f64_work_bytes(std::max(in, out), l);
}

std::vector<DeltaSvd> BatchedPtSvd::run(const RawWeight& base, std::span<const RawWeight> fine_tunes,
                                        i64 in, i64 out, const RandomizedSvdOptions& o) {
  return run_batches(base, fine_tunes, in, out, o, nullptr);
}

std::vector<DeltaSvd> BatchedPtSvd::run_into_stacks(const RawWeight& base,
                                                    std::span<const RawWeight> fine_tunes, i64 in,
                                                    i64 out, const RandomizedSvdOptions& o,
                                                    const Stacks& stacks) {
  if (stacks.r < std::min({o.rank, in, out}))
    throw usage_error("run_into_stacks: stacks of rank " + std::to_string(stacks.r) +
                      " cannot hold rank " + std::to_string(std::min({o.rank, in, out})));
  return run_batches(base, fine_tunes, in, out, o, &stacks);
}

std::vector<DeltaSvd> BatchedPtSvd::run_batches(const RawWeight& base,
                                                std::span<const RawWeight> fine_tunes, i64 in,
                                                i64 out, const RandomizedSvdOptions& o,
                                                const Stacks* stacks) {
  std::vector<DeltaSvd> results(fine_tunes.size());
  if (fine_tunes.empty() || in == 0 || out == 0) return results;
  std::size_t element = dtype_size(base.dtype);
  for (const auto& f : fine_tunes) element = std::max(element, dtype_size(f.dtype));
  // Batches from the plan's limit alone, never from what happens to be free at run time: a batch's
  // composition changes the GEMMs' kernels, and the outputs must be the same from run to run.
  auto tasks = static_cast<i64>(fine_tunes.size());
  while (tasks > 1 && work_bytes(tasks, in, out, o, element) > limit_) --tasks;
  const i64 small = std::min(in, out);
  const auto count = static_cast<std::size_t>(in * out);
  // Task t's part of the stacks: A r × (the module's in), B (its out) × r.
  const auto slice = [&](i64 t) {
    const i64 a_cols = stacks->stored_in_by_out ? out : in, b_rows = stacks->stored_in_by_out ? in : out;
    return Stacks{stacks->a + t * stacks->r * a_cols, stacks->b + t * b_rows * stacks->r, stacks->r,
                  stacks->stored_in_by_out};
  };
  Staging staging;
  if (!be_.shares_host_memory())
    for (auto& buffer : staging.buffer) buffer = be_.allocate_staging(count * element);
  DeviceBuffer base_raw = be_.allocate(count * element);
  const WaitOnUnwind wait(be_, stream_), wait_copies(be_, copy_);
  upload_weight(base_raw.data(), base, count, staging);
  for (i64 first = 0; first < static_cast<i64>(fine_tunes.size()); first += tasks) {
    const i64 batch = std::min<i64>(tasks, static_cast<i64>(fine_tunes.size()) - first);
    const Shape shape{batch, in, out, std::min(o.rank + std::max<i64>(o.oversampling, 0), small),
                      std::min(o.rank, small), element};
    Stacks part;  // this batch's tasks' slices of the stacks
    if (stacks) part = slice(first);
    const auto redo = run_batch(base_raw, base.dtype, fine_tunes.subspan(first, batch),
                                std::span(results).subspan(first, batch), shape, o, staging,
                                stacks ? &part : nullptr);
    // Where CholeskyQR2 failed at some step (a zero Δ, a rank-deficient sketch): that task
    // again on its own, deciding after every step (the batch's memory is free again by now).
    counts_.redone += static_cast<i64>(redo.size());
    for (const i64 t : redo) {
      Shape one = shape;
      one.tasks = 1;
      const i64 at = first + t;
      Stacks own;
      if (stacks) own = slice(at);
      run_batch_checked(base_raw, base.dtype, fine_tunes.subspan(at, 1), std::span(results).subspan(at, 1), one,
                        o, staging, stacks ? &own : nullptr);
    }
  }
  be_.synchronize(stream_);  // every block goes back to the pool with nothing left to run on it
  return results;
}

std::unique_ptr<BatchedPtSvd> make_device_pt_svd(Backend& backend) {
  if (backend.shares_host_memory()) return nullptr;
  return std::make_unique<BatchedPtSvd>(backend);
}

}  // namespace revmerge
