#pragma once
// What the RMM position routine (rmm_position.hpp) reads and writes, for the CPU and the GPU
// alike: the module's arguments (the tasks' factors in backend memory, the stored outputs, the
// error-Gram layout), the status keys, and one position's scratch — its carving and size for a
// team of lanes or one lane alone — with the view both halves of the routine work through.
#include <cstdint>

#include "kernels/float_bits.hpp"
#include "kernels/host_device.hpp"
#include "kernels/rmm_jacobi.hpp"

namespace revmerge::kernels {

using i64 = std::int64_t;

inline constexpr int kRmmMaxTasks = 64;   ///< n supported by the routine
inline constexpr int kRmmMaxRank = 256;   ///< r supported by the routine
/// Status word meaning "nothing to report".
inline constexpr unsigned long long kRmmNoKey = ~0ull;

/// One task's factors of a module, where the routine reads them (backend memory).
struct RmmTaskFactors {
  const void* a = nullptr;  ///< rank × in, row-major
  const void* b = nullptr;  ///< out × rank, row-major
  ElemType type = ElemType::f32;
  std::int32_t rank = 0;    ///< the task's own rank (≤ r); rows / columns past it read as zero
  float scale = 1.0f;       ///< multiplies B (alpha / r, folded in)
};

/// One module's RMM: inputs, sizes and where each side's results go. Side 0 is A (m = in
/// positions), side 1 is B (m = out).
struct RmmModuleArgs {
  RmmTaskFactors tasks[kRmmMaxTasks];
  i64 n = 0, r = 0, in = 0, out = 0, p = 0;
  ElemType storage = ElemType::f32;  ///< dtype of mean, basis and coef
  float drop_tol = 0;                ///< see rmm_drop_tolerance
  void* mean[2] = {};                ///< m × r, storage dtype
  void* basis[2] = {};               ///< m × r × p
  void* coef[2] = {};                ///< m × p × n
  double* eigenvalues[2] = {};       ///< m × n, descending (zeros at poisoned positions)
  /// x and D = x̂ − x for the error Grams, f32: tasks × m × 2r, each position's x (columns k)
  /// then D (columns r + k).
  float* ext[2] = {};
  /// [0]: smallest input key holding a non-finite value (rmm_input_key); [1]: smallest
  /// position key (side << 48 | j) whose Jacobi rotations did not converge. kRmmNoKey if none;
  /// updated by an atomic minimum, so the result does not depend on which lane saw it first.
  unsigned long long* status = nullptr;

  REVMERGE_HD i64 positions(int side) const { return side == 0 ? in : out; }
};

/// The key of element `index` of task t's A (side 0) or B (side 1): ordered as a reader meets
/// them (task after task, A before B, element by element).
REVMERGE_HD inline unsigned long long rmm_input_key(i64 task, int side, i64 index) {
  return (static_cast<unsigned long long>(task) << 49) |
         (static_cast<unsigned long long>(side) << 48) | static_cast<unsigned long long>(index);
}

/// n rounded up to a multiple of 8: the row length of the centred inputs, so a lane alone can
/// run over whole rows of 8 values.
REVMERGE_HD inline i64 rmm_padded(i64 n) { return (n + 7) / 8 * 8; }

/// Floats per row of a lane alone's centred inputs (see RmmScratch::xc): np, and room for V
/// as well, p × r doubles.
REVMERGE_HD inline i64 rmm_xc_row(i64 n, i64 p) {
  const i64 np = rmm_padded(n);
  return 2 * p > np ? 2 * p : np;
}

/// Floats per row of the gathered inputs (see RmmScratch::x): r for a lane alone; odd for a
/// team, so that lanes reading one k of different tasks meet different shared-memory banks.
REVMERGE_HD inline i64 rmm_x_row(i64 r, bool serial) { return serial ? r : r | 1; }

/// A position's working memory, carved from `rmm_scratch_bytes(n, r, p, serial)` bytes (8-byte
/// aligned). `serial`: the layout of a lane alone, which keeps the centred inputs as well, in
/// both orders, for its vector loops; a team recomputes x − μ where it needs it (the same
/// float subtraction, so the same values) — on a GPU the scratch lives in shared memory, and
/// how many positions an SM holds at once is what hides the routine's latency.
struct RmmScratch {
  double* g;     // N × N: the Gram, rotated to diagonal; then W_p (p × n, row q = column q)
  double* vt;    // N × N: row e = eigenvector e
  double* rot;   // 3 × N/2: the current step's rotations' c, then s, then t
  double* lam;   // n: eigenvalues, descending
  double* vcol;  // r + 2n: one basis column before normalisation, then each column's norm and
                 // its inverse
  double* scal;  // 4 scalars shared by the lanes
  float* x;      // n × rmm_x_row: the gathered inputs, x[t * row + k]
  float* xc;     // a lane alone: r × np, centred, x − μ, rows padded with zeros to np = n
                 // rounded up to 8 (rows of rmm_xc_row floats: it keeps V there later)
  float* xct;    // a lane alone: n × r, the same, transposed
  float* mc;     // a team: r, the mean as computed (x − μ is taken with it)
  float* muq;    // r: the mean as stored
  float* bq;     // p × r: the basis as stored, column q in row q
  float* cq;     // p × n: the coefficients as stored
  int* order;    // n: eigenvalue indices, largest first
  int* pairs;    // N/2 × 2: the current step's rotation pairs
  int* flags;    // 2: poisoned (non-finite inputs), converged

  REVMERGE_HD static i64 doubles(i64 n, i64 r) {
    const i64 N = rmm_jacobi_order(n);
    return 2 * N * N + 3 * (N / 2) + n + r + 2 * n + 4;
  }
  /// x's floats, rounded up to even so that xc starts 8-byte aligned (a lane alone keeps
  /// doubles there).
  REVMERGE_HD static i64 x_floats(i64 n, i64 r, bool serial) {
    return (n * rmm_x_row(r, serial) + 1) / 2 * 2;
  }
  REVMERGE_HD static i64 floats(i64 n, i64 r, i64 p, bool serial) {
    const i64 centred = serial ? r * rmm_xc_row(n, p) + n * r : r;
    return x_floats(n, r, serial) + centred + r + p * r + p * n;
  }
  REVMERGE_HD static i64 ints(i64 n) { return n + rmm_jacobi_order(n) + 2; }
  REVMERGE_HD static RmmScratch carve(void* base, i64 n, i64 r, i64 p, bool serial) {
    const i64 N = rmm_jacobi_order(n);
    RmmScratch s;
    s.g = static_cast<double*>(base);
    s.vt = s.g + N * N;
    s.rot = s.vt + N * N;
    s.lam = s.rot + 3 * (N / 2);
    s.vcol = s.lam + n;
    s.scal = s.vcol + r + 2 * n;
    s.x = reinterpret_cast<float*>(s.scal + 4);
    s.xc = s.x + x_floats(n, r, serial);
    s.xct = s.xc + (serial ? r * rmm_xc_row(n, p) : 0);
    s.mc = s.xct + (serial ? n * r : 0);
    s.muq = s.mc + (serial ? 0 : r);
    s.bq = s.muq + r;
    s.cq = s.bq + p * r;
    s.order = reinterpret_cast<int*>(s.cq + p * n);
    s.pairs = s.order + n;
    s.flags = s.pairs + N;
    return s;
  }
};

/// Bytes of scratch one position needs (a multiple of 8), for a lane alone (`serial`) or a
/// team.
REVMERGE_HD inline i64 rmm_scratch_bytes(i64 n, i64 r, i64 p, bool serial) {
  return (8 * RmmScratch::doubles(n, r) + 4 * RmmScratch::floats(n, r, p, serial) +
          4 * RmmScratch::ints(n) + 7) / 8 * 8;
}

/// The per-position quantities both halves of the routine use.
struct RmmPositionView {
  i64 n, r, p, N, np, xs;
  int side;
  i64 j;
  RmmScratch s;
  ElemType st;
  void* mean_out;
  void* basis_out;
  void* coef_out;
  float* ext;
  i64 ext_task, ext_pos;

  REVMERGE_HD_INLINE RmmPositionView(const RmmModuleArgs& args, i64 n_, int side_, i64 j_,
                                     void* scratch, bool serial)
      : n(n_), r(args.r), p(args.p), N(rmm_jacobi_order(n_)), np(rmm_padded(n_)),
        xs(rmm_x_row(args.r, serial)), side(side_),
        j(j_), s(RmmScratch::carve(scratch, n_, args.r, args.p, serial)), st(args.storage),
        mean_out(args.mean[side_]), basis_out(args.basis[side_]), coef_out(args.coef[side_]),
        ext(args.ext[side_]), ext_task(args.positions(side_) * 2 * args.r),
        ext_pos(j_ * 2 * args.r) {}
  /// Where x (part 0) or D (part 1) of (task t, row k) goes in the error-Gram layout.
  REVMERGE_HD_INLINE i64 ext_at(i64 t, i64 k, int part) const {
    return t * ext_task + ext_pos + part * r + k;
  }
  /// x of (task t, row k) as gathered.
  REVMERGE_HD_INLINE float& x_at(i64 t, i64 k) const { return s.x[t * xs + k]; }
  /// x − μ of (task t, row k) for a team: the float the centred inputs would hold.
  REVMERGE_HD_INLINE float centred(i64 t, i64 k) const { return s.x[t * xs + k] - s.mc[k]; }
};

}  // namespace revmerge::kernels
