#include "methods/store/rmm_sides.hpp"

#include <cblas.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <iterator>
#include <string>

#include "methods/store/parallel_tasks.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

using i64 = std::int64_t;

i64 side_rows(const PlannedModule& pm, int side) { return side == 0 ? pm.in : pm.out; }

// Task t's positions of one side as an m × r row-major f64 matrix.
std::vector<double> positions(const PlannedModule& pm, const TaskFactors& tf, int side) {
  const i64 r = pm.rank, m = side_rows(pm, side);
  std::vector<double> x(static_cast<std::size_t>(m * r), 0.0);
  for (i64 j = 0; j < m; ++j)
    for (i64 k = 0; k < tf.rank; ++k)
      x[j * r + k] = side == 0 ? double(tf.a[k * pm.in + j]) : tf.scale * double(tf.b[j * tf.rank + k]);
  return x;
}

// uᵀu for an m × r row-major u (half the work of gram(u, u)).
std::vector<double> self_gram(const std::vector<double>& u, i64 m, i64 r) {
  std::vector<double> g(static_cast<std::size_t>(r * r));
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, r, m, 1.0, u.data(), r, 0.0, g.data(), r);
  for (i64 i = 0; i < r; ++i)
    for (i64 j = 0; j < i; ++j) g[i * r + j] = g[j * r + i];
  return g;
}

// uᵀv for m × r row-major u and v: an r × r matrix.
std::vector<double> gram(const std::vector<double>& u, const std::vector<double>& v, i64 m, i64 r) {
  std::vector<double> g(static_cast<std::size_t>(r * r));
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, r, m, 1.0, u.data(), r, v.data(), r, 0.0,
              g.data(), r);
  return g;
}

double trace(const std::vector<double>& g, i64 r) {
  double s = 0;
  for (i64 k = 0; k < r; ++k) s += g[k * r + k];
  return s;
}

// ⟨x, y⟩ and ⟨xᵀ, y⟩ of r × r matrices.
double dot(const std::vector<double>& x, const std::vector<double>& y) {
  double s = 0;
  for (std::size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
  return s;
}
double dot_transposed(const std::vector<double>& x, const std::vector<double>& y, i64 r) {
  double s = 0;
  for (i64 i = 0; i < r; ++i)
    for (i64 k = 0; k < r; ++k) s += x[k * r + i] * y[i * r + k];
  return s;
}

}  // namespace

double side_numbers(i64 m, i64 r, i64 n, i64 p) { return double(m) * double(p * (r + n) + r); }

SideGrams side_grams(const PlannedModule& pm, const std::vector<TaskFactors>& f, int threads) {
  const auto n = static_cast<long>(f.size());
  SideGrams g;
  for (int side = 0; side < 2; ++side) {
    g.x[side].resize(f.size());
    g.xx[side].resize(f.size());
    g.x_sq[side].resize(f.size());
  }
  parallel_tasks(2 * n, threads, [&](long i) {
    const int side = static_cast<int>(i / n);
    const auto t = static_cast<std::size_t>(i % n);
    g.x[side][t] = positions(pm, f[t], side);
    g.xx[side][t] = self_gram(g.x[side][t], side_rows(pm, side), pm.rank);
    g.x_sq[side][t] = trace(g.xx[side][t], pm.rank);
  });
  return g;
}

SideGrams side_grams(const PlannedModule& pm, const std::vector<TaskFactors>& f, const ModuleGrams& g) {
  SideGrams x;
  for (std::size_t t = 0; t < f.size(); ++t) {
    x.xx[0].push_back(g.block(g.a, t, f[t].rank, 1.0, pm.rank));
    x.xx[1].push_back(g.block(g.b, t, f[t].rank, f[t].scale * f[t].scale, pm.rank));
    for (int side = 0; side < 2; ++side) x.x_sq[side].push_back(trace(x.xx[side][t], pm.rank));
  }
  x.x[0].resize(f.size());
  x.x[1].resize(f.size());
  return x;
}

namespace {

// One side's stored basis with each direction contiguous: m × P × r (it is stored m × r × P,
// direction last), so sweeping a direction over the positions reads memory in order. Shared
// by the side's tasks.
std::vector<double> directions_by_position(const RmmSide& stored, i64 m, i64 r, i64 stored_p) {
  std::vector<double> out(static_cast<std::size_t>(m * stored_p * r));
  for (i64 j = 0; j < m; ++j)
    for (i64 k = 0; k < r; ++k)
      for (i64 q = 0; q < stored_p; ++q)
        out[(j * stored_p + q) * r + k] = stored.basis[(j * r + k) * stored_p + q];
  return out;
}

// Row j − j0 of D (stride `ld`) += directions [from, to) at position j, each scaled by task t's
// coefficient there, for positions j0 … j1 − 1: one sweep over D whatever the number of
// directions.
void add_directions(double* d, i64 ld,
                    const std::vector<double>& directions, const RmmSide& stored, i64 j0, i64 j1, i64 r,
                    i64 stored_p, i64 n, i64 from, i64 to, i64 t) {
  if (from >= to) return;
  for (i64 j = j0; j < j1; ++j) {
    double* row = d + (j - j0) * ld;
    for (i64 q = from; q < to; ++q) {
      const double c = stored.coef[(j * stored_p + q) * n + t];
      const double* v = directions.data() + (j * stored_p + q) * r;
      for (i64 k = 0; k < r; ++k) row[k] += v[k] * c;
    }
  }
}

// The reported errors: D in f64, its Grams in f64.
void exact_side(const std::vector<double>& x, const RmmSide& stored, const std::vector<double>& directions, i64 m,
                i64 r, i64 stored_p, i64 n, i64 t, const std::vector<i64>& ps, std::vector<SideDifference>& out) {
  std::vector<double> d(x.size());
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = double(stored.mean[i]) - x[i];
  i64 q = 0;
  for (std::size_t i = 0; i < ps.size(); ++i) {
    add_directions(d.data(), r, directions, stored, 0, m, r, stored_p, n, q, ps[i], t);
    q = std::max(q, ps[i]);
    out[i].dd[t] = self_gram(d, m, r);
    out[i].dx[t] = gram(d, x, m, r);
  }
}

}  // namespace

std::vector<SideDifference> side_differences(const PlannedModule& pm, const SideGrams& grams, int side,
                                             const RmmSide& stored, i64 stored_p,
                                             const std::vector<i64>& ps, int threads) {
  const i64 r = pm.rank, m = side_rows(pm, side), n = static_cast<i64>(grams.x[side].size());
  std::vector<SideDifference> out(ps.size());
  for (std::size_t i = 0; i < ps.size(); ++i) {
    out[i].p = ps[i];
    out[i].dd.resize(static_cast<std::size_t>(n));
    out[i].dx.resize(static_cast<std::size_t>(n));
    out[i].d_sq.resize(static_cast<std::size_t>(n));
  }
  const auto directions = directions_by_position(stored, m, r, stored_p);
  parallel_tasks(n, threads, [&](long t) {
    exact_side(grams.x[side][t], stored, directions, m, r, stored_p, n, t, ps, out);
    for (auto& o : out) o.d_sq[t] = trace(o.dd[t], r);
  });
  return out;
}

void rmm_stacks(const PlannedModule& pm, const std::vector<TaskFactors>& f, std::vector<float>& a,
                std::vector<float>& b) {
  const i64 n = static_cast<i64>(f.size()), r = pm.rank;
  a.assign(static_cast<std::size_t>(n * r * pm.in), 0.0f);
  b.assign(static_cast<std::size_t>(n * pm.out * r), 0.0f);
  for (i64 t = 0; t < n; ++t) {
    const auto& tf = f[t];
    std::copy(tf.a.begin(), tf.a.end(), a.begin() + t * r * pm.in);
    for (i64 o = 0; o < pm.out; ++o)
      for (i64 k = 0; k < tf.rank; ++k)
        b[(t * pm.out + o) * r + k] = static_cast<float>(tf.scale * tf.b[o * tf.rank + k]);
  }
}

RmmCandidateRun::RmmCandidateRun(Backend& be, const PlannedModule& pm, const std::vector<TaskFactors>& f,
                                 const std::vector<i64>& ps, DType storage)
    : be_(be), ps_(ps), n_(static_cast<i64>(f.size())), r_(pm.rank) {
  if (ps.empty() || ps.size() > std::size(kernels::RmmCandidateArgs{}.ps) || !std::is_sorted(ps.begin(), ps.end()) ||
      ps.front() < 0)
    throw usage_error("rmm candidates: " + std::to_string(ps.size()) +
                      " basis sizes; they must be ascending, none below 0, and at most one more than RMM's largest "
                      "task count");
  const i64 n = n_, r = r_, P = ps.back();
  const RmmShape shape{n, r, pm.in, pm.out, P};
  check_rmm_shape(shape);
  std::vector<float> host_a, host_b;
  rmm_stacks(pm, f, host_a, host_b);
  // Pageable uploads are staged before the calls return: the stacks need not outlive them.
  inputs_ = rmm_upload(be, shape, host_a.data(), host_b.data(), stream_);
  const auto layout = RmmPacked::layout(shape, storage);
  packed_ = be.allocate(layout.bytes);
  work_ = rmm_module_enqueue(be, shape, inputs_.tasks, storage, packed_.data(), stream_, RmmTerms::none);
  queued_ = true;
  try {
    queue_candidates(shape, storage, layout);
  } catch (...) {  // the destructor will not run: wait here for what was queued
    try {
      be.synchronize(stream_);
    } catch (...) {
    }
    throw;
  }
}

kernels::RmmCandidateArgs rmm_candidate_args(const RmmShape& shape, int side, DType storage,
                                             const RmmPacked& layout, const void* packed,
                                             const RmmModuleWork& work, const std::vector<i64>& ps) {
  const auto* bytes = static_cast<const unsigned char*>(packed);
  kernels::RmmCandidateArgs args;
  args.n = shape.n, args.r = shape.r, args.m = side == 0 ? shape.in : shape.out, args.stored_p = shape.p;
  args.storage = rmm_storage_type(storage);
  args.mean = bytes + layout.mean[side];
  args.basis = bytes + layout.basis[side];
  args.coef = bytes + layout.coef[side];
  args.ext = work.ext[side];
  args.count = static_cast<i64>(ps.size());
  std::copy(ps.begin(), ps.end(), args.ps);
  return args;
}

void RmmCandidateRun::queue_candidates(const RmmShape& shape, DType storage, const RmmPacked& layout) {
  const i64 count = static_cast<i64>(ps_.size()), per = 2 * r_ * r_;
  const std::size_t gram_bytes = sizeof(double) * static_cast<std::size_t>(count * n_ * per);
  // The results come back into staging memory, so the downloads too are queued, not waited on.
  results_ = be_.allocate_staging(2 * gram_bytes + 2 * sizeof(unsigned long long));
  auto* results = static_cast<unsigned char*>(results_.data());
  for (int side = 0; side < 2; ++side) {
    auto args = rmm_candidate_args(shape, side, storage, layout, packed_.data(), work_, ps_);
    grams_[side] = be_.allocate(gram_bytes);
    args.grams = static_cast<double*>(grams_[side].data());
    be_.rmm_candidate_grams(args, stream_);
    be_.download(results + side * gram_bytes, grams_[side].data(), gram_bytes, stream_);
  }
  be_.download(results + 2 * gram_bytes, static_cast<unsigned char*>(packed_.data()) + layout.status,
               2 * sizeof(unsigned long long), stream_);
}

RmmCandidateRun::~RmmCandidateRun() {
  if (!queued_) return;
  try {  // never taken (an error on the host meanwhile): the queued work must not outlive its memory
    be_.synchronize(stream_);
  } catch (...) {
  }
}

std::array<std::vector<SideDifference>, 2> RmmCandidateRun::take() {
  be_.synchronize(stream_);
  queued_ = false;
  const i64 n = n_, r = r_, count = static_cast<i64>(ps_.size()), per = 2 * r * r;
  const auto* grams = static_cast<const double*>(results_.data());
  unsigned long long status[2];
  std::memcpy(status, grams + 2 * count * n * per, sizeof(status));
  check_rmm_converged(status[1]);
  std::array<std::vector<SideDifference>, 2> out;
  for (int side = 0; side < 2; ++side) {
    out[side].resize(ps_.size());
    for (i64 i = 0; i < count; ++i) {
      auto& d = out[side][i];
      d.p = ps_[i];
      for (i64 t = 0; t < n; ++t) {
        const double* g = grams + ((side * count + i) * n + t) * per;
        std::vector<double> dd(static_cast<std::size_t>(r * r)), dx(static_cast<std::size_t>(r * r));
        for (i64 u = 0; u < r; ++u)
          for (i64 v = 0; v < r; ++v) {
            dd[u * r + v] = g[u * 2 * r + v];
            dx[u * r + v] = g[u * 2 * r + r + v];
          }
        d.d_sq.push_back(trace(dd, r));
        d.dd.push_back(std::move(dd));
        d.dx.push_back(std::move(dx));
      }
    }
  }
  return out;
}

std::array<std::vector<SideDifference>, 2> rmm_candidates(Backend& be, const PlannedModule& pm,
                                                          const std::vector<TaskFactors>& f,
                                                          const std::vector<i64>& ps, DType storage) {
  return RmmCandidateRun(be, pm, f, ps, storage).take();
}

std::vector<double> delta_error_sq(const SideGrams& x, const SideDifference& a, const SideDifference& b, i64 r) {
  std::vector<double> out;
  for (std::size_t t = 0; t < a.dd.size(); ++t) {
    // With D_A = Â − A (r × in) and D_B = B̂ − B (out × r) as m × r position matrices:
    // D_AD_Aᵀ = a.dd, D_AAᵀ = a.dx, D_BᵀD_B = b.dd, BᵀD_B = b.dxᵀ, AAᵀ = xx[0], BᵀB = xx[1].
    const auto &dda = a.dd[t], &dxa = a.dx[t], &ddb = b.dd[t], &dxb = b.dx[t];
    const double e = dot(x.xx[1][t], dda) + dot(ddb, x.xx[0][t]) + dot(ddb, dda) +
                     2 * dot_transposed(dxb, dxa, r) + 2 * dot_transposed(dxb, dda, r) +
                     2 * dot_transposed(ddb, dxa, r);
    out.push_back(e > 0 ? e : 0.0);
  }
  return out;
}

std::vector<double> delta_norm_sq(const SideGrams& x) {
  std::vector<double> out;
  for (std::size_t t = 0; t < x.xx[0].size(); ++t) {
    const double v = dot(x.xx[1][t], x.xx[0][t]);
    out.push_back(v > 0 ? v : 0.0);
  }
  return out;
}

}  // namespace revmerge
