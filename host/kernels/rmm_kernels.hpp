#pragma once
// Element-wise and small-reduction kernels of the methods, written once as functors over an
// index. cuda/*.cu runs them with thrust::for_each_n on the GPU; the CPU backend runs them with
// Thrust's OpenMP system. Each functor call writes only its own outputs and sums in a fixed
// order, so results are identical for any thread count.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/host_device.hpp"

namespace revmerge::kernels {

using i64 = std::int64_t;

/// One call per destination element: the GPU form (enough threads even when d0 · d1 is small).
struct Permute3 {
  const float* src;
  i64 s0, s1, s2, d1, d2;
  float* dst;
  REVMERGE_HD void operator()(i64 idx) const {
    const i64 i2 = idx % d2, i1 = (idx / d2) % d1, i0 = idx / (d1 * d2);
    dst[idx] = src[i0 * s0 + i1 * s1 + i2 * s2];
  }
};

/// One call per destination row (i0, i1): the CPU form. Rows are written contiguously and the
/// index arithmetic is paid once per row, which a CPU thread needs and a GPU thread does not.
struct Permute3Rows {
  const float* src;
  i64 s0, s1, s2, d1, d2;
  float* dst;
  REVMERGE_HD void operator()(i64 row) const {
    const i64 i1 = row % d1, i0 = row / d1;
    const float* from = src + i0 * s0 + i1 * s1;
    float* to = dst + row * d2;
    for (i64 i2 = 0; i2 < d2; ++i2) to[i2] = from[i2 * s2];
  }
};

/// One call per row of length n.
struct CenterRows {
  float* x;
  float* mean;
  i64 n;
  REVMERGE_HD void operator()(i64 row) const {
    float* p = x + row * n;
    double s = 0;
    for (i64 i = 0; i < n; ++i) s += p[i];
    const float m = static_cast<float>(s / static_cast<double>(n));
    mean[row] = m;
    for (i64 i = 0; i < n; ++i) p[i] -= m;
  }
};

/// One call per output element (row, column).
struct BroadcastRows {
  const float* value;
  float* out;
  i64 n;
  REVMERGE_HD void operator()(i64 idx) const { out[idx] = value[idx / n]; }
};

/// One call per column of W_p (batch × n × p): copies the eigenvector of the (q+1)-th largest
/// eigenvalue and removes its component along the all-ones vector. The centred data satisfy
/// X̃ 1 = 0, so the exact eigenvectors of non-zero eigenvalues are orthogonal to 1; the f32 Gram's
/// rounding tilts them towards it by ~ε·cond, which would otherwise leak into the
/// reconstruction as a first-order error.
struct SelectTop {
  const float* eigvecs;  // batch × n × n, row k = eigenvector k, ascending
  float* wp;
  i64 n, p;
  REVMERGE_HD void operator()(i64 idx) const {
    const i64 q = idx % p, b = idx / p;
    const float* src = eigvecs + b * n * n + (n - 1 - q) * n;
    double mean = 0;
    for (i64 i = 0; i < n; ++i) mean += src[i];
    mean /= static_cast<double>(n);
    float* dst = wp + b * n * p + q;
    for (i64 i = 0; i < n; ++i) dst[i * p] = static_cast<float>(src[i] - mean);
  }
};

/// One call per (position, basis column).
struct NormalizeBasis {
  float* v;              // batch × r × p
  const float* wp;       // batch × n × p
  float* c;              // batch × p × n
  const float* eigenvalues;  // batch × n, ascending
  i64 r, n, p;
  float rel_tol;
  REVMERGE_HD void operator()(i64 idx) const {
    const i64 q = idx % p, b = idx / p;
    float* vb = v + b * r * p;
    double s = 0;
    for (i64 k = 0; k < r; ++k) s += static_cast<double>(vb[k * p + q]) * vb[k * p + q];
    const double lmax = eigenvalues[b * n + n - 1];
    const bool keep = lmax > 0 && s > static_cast<double>(rel_tol) * lmax && s > 0;
    const double norm = keep ? sqrt(s) : 0.0;
    const float inv = keep ? static_cast<float>(1.0 / norm) : 0.0f;
    for (i64 k = 0; k < r; ++k) vb[k * p + q] *= inv;
    float* cb = c + b * p * n + q * n;
    const float* wb = wp + b * n * p;
    for (i64 i = 0; i < n; ++i) cb[i] = static_cast<float>(norm * wb[i * p + q]);
  }
};

struct Subtract {
  const float* x;
  const float* y;
  float* out;
  REVMERGE_HD void operator()(i64 i) const { out[i] = x[i] - y[i]; }
};

/// One call per position: a Gram matrix holding NaN / Inf (possible only when non-finite inputs
/// were allowed) becomes the identity, so the eigensolver sees a valid matrix, and the position
/// is marked for PoisonMarked.
struct MaskNonfinite {
  float* gram;  // batch × n × n
  float* mark;  // batch: 1 where non-finite
  i64 n;
  REVMERGE_HD void operator()(i64 b) const {
    float* g = gram + b * n * n;
    bool bad = false;
    for (i64 i = 0; i < n * n; ++i) bad = bad || !(g[i] - g[i] == 0.0f);  // NaN or ±Inf
    mark[b] = bad ? 1.0f : 0.0f;
    if (bad)
      for (i64 i = 0; i < n * n; ++i) g[i] = (i % (n + 1) == 0) ? 1.0f : 0.0f;
  }
};

/// One call per position: a marked position's stored mean, basis and coefficients become NaN,
/// so its reconstruction and every error it enters say so.
struct PoisonMarked {
  const float* mark;
  float* mean;   // batch × r
  float* basis;  // batch × r × p
  float* coef;   // batch × p × n
  i64 r, p, n;
  REVMERGE_HD void operator()(i64 b) const {
    if (mark[b] == 0.0f) return;
    const float nan = NAN;
    for (i64 i = 0; i < r; ++i) mean[b * r + i] = nan;
    for (i64 i = 0; i < r * p; ++i) basis[b * r * p + i] = nan;
    for (i64 i = 0; i < p * n; ++i) coef[b * p * n + i] = nan;
  }
};

/// One call per block: out[b] = Σ x[b, :] · y[b, :].
struct BatchedDot {
  const float* x;
  const float* y;
  double* out;
  i64 count;
  REVMERGE_HD void operator()(i64 b) const {
    double s = 0;
    for (i64 i = 0; i < count; ++i) s += static_cast<double>(x[b * count + i]) * y[b * count + i];
    out[b] = s;
  }
};

/// One call per column k: out[k] = Σ_b x[b, k].
struct ColumnSums {
  const float* x;
  double* out;
  i64 batch, n;
  REVMERGE_HD void operator()(i64 k) const {
    double s = 0;
    for (i64 b = 0; b < batch; ++b) s += x[b * n + k];
    out[k] = s;
  }
};

/// Round-to-nearest-even to bfloat16 or half precision, kept in an f32 slot.
REVMERGE_HD inline float round_bf16(float f) {
  unsigned int x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return f;  // NaN
  x = (x + 0x7fffu + ((x >> 16) & 1u)) & 0xffff0000u;
  float out;
  memcpy(&out, &x, 4);
  return out;
}

REVMERGE_HD inline float round_f16(float f) {
  const float a = fabsf(f);
  if (!(a < 65520.0f)) return a != a ? f : copysignf(INFINITY, f);  // NaN stays, overflow → ±inf
  if (a < 6.103515625e-05f) {  // subnormal half: multiples of 2^-24
    return copysignf(nearbyintf(a * 16777216.0f) / 16777216.0f, f);
  }
  // Normal half: 11 significant bits. Scale to an integer grid of the value's binade.
  int e;
  frexpf(a, &e);                         // a = m · 2^e, m in [0.5, 1)
  const float unit = ldexpf(1.0f, e - 11);  // ulp of a half in this binade
  return copysignf(nearbyintf(a / unit) * unit, f);
}

struct RoundToBf16 {
  float* x;
  REVMERGE_HD void operator()(i64 i) const { x[i] = round_bf16(x[i]); }
};

struct RoundToF16 {
  float* x;
  REVMERGE_HD void operator()(i64 i) const { x[i] = round_f16(x[i]); }
};

}  // namespace revmerge::kernels
