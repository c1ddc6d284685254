// The CPU backend's element-wise work: the shared functors run by Thrust's OpenMP system.
// Compiled with THRUST_DEVICE_SYSTEM=OMP by the host compiler (never by nvcc).
#include <omp.h>

#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/system/omp/execution_policy.h>

#include "backend/cpu_backend.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/lowrank_kernels.hpp"
#include "revmerge/error.hpp"

namespace revmerge {
namespace {

template <class F>
void run(std::int64_t count, const F& f) {
  if (omp_in_parallel()) {  // one block of CpuBackend::parallel_blocks: this thread's work
    for (std::int64_t i = 0; i < count; ++i) f(i);
    return;
  }
  if (count > 0)
    thrust::for_each_n(thrust::omp::par, thrust::counting_iterator<std::int64_t>(0), count, f);
}

}  // namespace

void CpuBackend::cholesky_qr_verdict_f64(const double* r2, const int* infos, std::int64_t n,
                                         std::int64_t batch, double tolerance, int* held, Stream) {
  run(batch, kernels::CholeskyQrVerdict{r2, infos, n, batch, tolerance, held});
}

void CpuBackend::lora_stacks_f64(const double* u, const double* v, const double* s,
                                 std::int64_t tasks, std::int64_t in, std::int64_t out,
                                 std::int64_t k, std::int64_t r, float* a, float* b, Stream) {
  run(tasks * r * in, kernels::LoraStackA{u, in, k, r, a});
  run(tasks * out * r, kernels::LoraStackB{v, s, out, k, r, b});
}

void CpuBackend::elementwise(const kernels::ElementwiseStep& step, Stream) {
  kernels::with_elementwise_body(step, [&](const auto& body) { run(kernels::step_indices(step), body); });
}

}  // namespace revmerge
