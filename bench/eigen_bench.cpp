// The store's largest eigensolves, by every solver at hand: `--method auto` solves two R × R
// symmetric f64 problems per module for its shared bases (R = Σ ranks: 512 for 8 × r64) — on a
// GPU through cuSOLVER's syevd, which the H200 check timed at ~37 ms a module ("shared bases",
// bench/RESULTS.md), the largest of auto's steps there. This times the same problem by LAPACK
// on the host (one thread, every thread) and, where a GPU is usable, by cuSOLVER's dense
// solvers one at a time, a module's two matrices in one batched call, and several host
// threads each on a stream of its own (as the store's workers share one GPU) — each beside the
// others in one run, with their eigenvalues checked against LAPACK's.
//
//   revmerge_bench_eigen [--n 512] [--repeats 5] [--workers 4]
#include <cblas.h>
#include <fmt/format.h>
#include <lapacke.h>
#include <omp.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "timing.hpp"

#ifdef REVMERGE_BENCH_CUDA
#include <cuda_runtime.h>
#include <cusolverDn.h>
#endif

extern "C" void openblas_set_num_threads(int);

namespace rb = revmerge::bench;
using i64 = std::int64_t;

namespace {

// A stacked Gram as the store makes it: X Xᵀ of n rows of width 4n whose scales fall off, so
// the spectrum spans many orders (row-major; symmetric, so either layout).
std::vector<double> stacked_gram(i64 n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g;
  const i64 w = 4 * n;
  std::vector<double> x(static_cast<std::size_t>(n * w)), a(static_cast<std::size_t>(n * n));
  for (i64 i = 0; i < n; ++i)
    for (i64 k = 0; k < w; ++k) x[i * w + k] = g(rng) * std::pow(0.97, static_cast<double>(i % 64));
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, static_cast<int>(n), static_cast<int>(w),
              1.0, x.data(), static_cast<int>(w), 0.0, a.data(), static_cast<int>(n));
  for (i64 i = 0; i < n; ++i)
    for (i64 j = 0; j < i; ++j) a[i * n + j] = a[j * n + i];
  return a;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Largest |λ − λ_ref| over the spectrum, relative to the largest eigenvalue (both ascending).
double spectrum_gap(const std::vector<double>& w, const std::vector<double>& ref) {
  double gap = 0, top = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    gap = std::max(gap, std::abs(w[i] - ref[i]));
    top = std::max(top, std::abs(ref[i]));
  }
  return top > 0 ? gap / top : gap;
}

void report(const std::string& what, const std::vector<double>& seconds, int matrices, double gap) {
  fmt::print("{:<52} {:>9.2f} ms {:>9.2f} ms/matrix   λ off by {:.1e}\n", what,
             1e3 * median(seconds), 1e3 * median(seconds) / matrices, gap);
}

#ifdef REVMERGE_BENCH_CUDA
#define CHECK_CUDA(x)                                                           \
  do {                                                                          \
    if (const cudaError_t e = (x); e != cudaSuccess)                            \
      throw std::runtime_error(std::string(#x) + ": " + cudaGetErrorString(e)); \
  } while (0)
#define CHECK_SOLVER(x)                                                                 \
  do {                                                                                  \
    if (const cusolverStatus_t e = (x); e != CUSOLVER_STATUS_SUCCESS)                   \
      throw std::runtime_error(std::string(#x) + ": status " + std::to_string(int(e))); \
  } while (0)

// One solver on one stream: its handle, the matrices' device copy and workspaces.
struct DeviceSolve {
  cusolverDnHandle_t h = nullptr;
  cudaStream_t st = nullptr;
  double *a = nullptr, *w = nullptr, *work = nullptr;
  int* info = nullptr;
  std::vector<char> host_work;
  std::size_t work_bytes = 0;
  i64 n, batch;
  DeviceSolve(i64 n_, i64 batch_) : n(n_), batch(batch_) {
    CHECK_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    CHECK_SOLVER(cusolverDnCreate(&h));
    CHECK_SOLVER(cusolverDnSetStream(h, st));
    CHECK_CUDA(cudaMalloc(&a, sizeof(double) * n * n * batch));
    CHECK_CUDA(cudaMalloc(&w, sizeof(double) * n * batch));
    CHECK_CUDA(cudaMalloc(&info, sizeof(int) * batch));
  }
  ~DeviceSolve() {
    cudaFree(a), cudaFree(w), cudaFree(info), cudaFree(work);
    cusolverDnDestroy(h);
    cudaStreamDestroy(st);
  }
  void upload(const std::vector<double>& m) {
    for (i64 b = 0; b < batch; ++b)
      CHECK_CUDA(cudaMemcpyAsync(a + b * n * n, m.data(), sizeof(double) * n * n,
                                 cudaMemcpyHostToDevice, st));
  }
  void reserve(std::size_t bytes) {
    if (bytes <= work_bytes) return;
    cudaFree(work);
    CHECK_CUDA(cudaMalloc(&work, bytes));
    work_bytes = bytes;
  }
  std::vector<double> eigenvalues() {
    std::vector<double> out(static_cast<std::size_t>(n));
    CHECK_CUDA(cudaMemcpyAsync(out.data(), w, sizeof(double) * n, cudaMemcpyDeviceToHost, st));
    CHECK_CUDA(cudaStreamSynchronize(st));
    return out;
  }
  // The store's call: Dsyevd, one matrix at a time.
  void syevd() {
    int lwork = 0;
    const int ni = static_cast<int>(n);
    CHECK_SOLVER(cusolverDnDsyevd_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                             ni, a, ni, w, &lwork));
    reserve(sizeof(double) * std::max(lwork, 1));
    for (i64 b = 0; b < batch; ++b)
      CHECK_SOLVER(cusolverDnDsyevd(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, ni,
                                    a + b * n * n, ni, w + b * n, work, lwork, info + b));
  }
  // Jacobi (syevj) at the given tolerance, one matrix at a time.
  void syevj(double tol) {
    syevjInfo_t params = nullptr;
    CHECK_SOLVER(cusolverDnCreateSyevjInfo(&params));
    CHECK_SOLVER(cusolverDnXsyevjSetTolerance(params, tol));
    int lwork = 0;
    const int ni = static_cast<int>(n);
    CHECK_SOLVER(cusolverDnDsyevj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                             ni, a, ni, w, &lwork, params));
    reserve(sizeof(double) * std::max(lwork, 1));
    for (i64 b = 0; b < batch; ++b)
      CHECK_SOLVER(cusolverDnDsyevj(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, ni,
                                    a + b * n * n, ni, w + b * n, work, lwork, info + b, params));
    CHECK_SOLVER(cusolverDnDestroySyevjInfo(params));
  }
  // The 64-bit API's divide and conquer (Xsyevd), or the batch in one call (XsyevBatched).
  void xsyev(bool batched) {
    cusolverDnParams_t params = nullptr;
    CHECK_SOLVER(cusolverDnCreateParams(&params));
    std::size_t dev = 0, host = 0;
    if (batched)
      CHECK_SOLVER(cusolverDnXsyevBatched_bufferSize(
          h, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, a, n,
          CUDA_R_64F, w, CUDA_R_64F, &dev, &host, batch));
    else
      CHECK_SOLVER(cusolverDnXsyevd_bufferSize(h, params, CUSOLVER_EIG_MODE_VECTOR,
                                               CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, a, n,
                                               CUDA_R_64F, w, CUDA_R_64F, &dev, &host));
    reserve(std::max<std::size_t>(dev, 8));
    host_work.resize(std::max<std::size_t>(host, 8));
    if (batched)
      CHECK_SOLVER(cusolverDnXsyevBatched(
          h, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, CUDA_R_64F, a, n,
          CUDA_R_64F, w, CUDA_R_64F, work, dev, host_work.data(), host, info, batch));
    else
      for (i64 b = 0; b < batch; ++b)
        CHECK_SOLVER(cusolverDnXsyevd(h, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                      n, CUDA_R_64F, a + b * n * n, n, CUDA_R_64F, w + b * n,
                                      CUDA_R_64F, work, dev, host_work.data(), host, info + b));
    CHECK_SOLVER(cusolverDnDestroyParams(params));
  }
};

// Times `solve` on each of `workers` host threads at once (each its own DeviceSolve of
// `per` matrices), `repeats` times after a warm-up; every thread uploads, solves, waits.
void device_case(const std::string& what, const std::vector<double>& m,
                 const std::vector<double>& ref, i64 n, i64 per, int workers, int repeats,
                 const std::function<void(DeviceSolve&)>& solve) {
  try {
    std::vector<std::unique_ptr<DeviceSolve>> solvers;
    for (int k = 0; k < workers; ++k) solvers.push_back(std::make_unique<DeviceSolve>(n, per));
    // A solver's failure (a call this cuSOLVER does not take at this size) comes back to the
    // case, which reports it, instead of ending the program from a worker thread.
    auto round = [&] {
      std::vector<std::thread> threads;
      std::vector<std::exception_ptr> failed(solvers.size());
      for (std::size_t k = 0; k < solvers.size(); ++k)
        threads.emplace_back([&, k] {
          try {
            solvers[k]->upload(m);
            solve(*solvers[k]);
            CHECK_CUDA(cudaStreamSynchronize(solvers[k]->st));
          } catch (...) {
            failed[k] = std::current_exception();
          }
        });
      for (auto& t : threads) t.join();
      for (const auto& e : failed)
        if (e) std::rethrow_exception(e);
    };
    round();  // warm-up: library kernels loaded, workspaces allocated
    std::vector<double> seconds;
    for (int i = 0; i < repeats; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      round();
      seconds.push_back(rb::seconds_since(t0));
    }
    report(what, seconds, static_cast<int>(per) * workers,
           spectrum_gap(solvers[0]->eigenvalues(), ref));
  } catch (const std::exception& e) {
    fmt::print("{:<52} not run: {}\n", what, e.what());
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Times the symmetric f64 eigensolves of the budgeted store's shared bases"};
  i64 n = 512;
  int repeats = 5, workers = 4;
  app.add_option("--n", n, "matrix order (the store's R = Σ ranks; default 512)")
      ->check(CLI::Range(2, 8192));
  app.add_option("--repeats", repeats, "timed rounds (median shown; default 5)")
      ->check(CLI::Range(1, 1000));
  app.add_option("--workers", workers, "host threads sharing the GPU in the last cases (default 4)")
      ->check(CLI::Range(1, 64));
  CLI11_PARSE(app, argc, argv);

  const auto m = stacked_gram(n, 1);
  fmt::print("symmetric eigenproblems of order {} (f64, eigenvectors too), medians of {}\n", n,
             repeats);
  // LAPACK on the host: the CPU backend's call (row-major dsyevd).
  std::vector<double> ref(static_cast<std::size_t>(n));
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (const int threads : {1, cores}) {
    openblas_set_num_threads(threads);
    std::vector<double> seconds;
    for (int i = 0; i <= repeats; ++i) {
      auto a = m;
      const auto t0 = std::chrono::steady_clock::now();
      const int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', static_cast<int>(n), a.data(),
                                      static_cast<int>(n), ref.data());
      if (i > 0) seconds.push_back(rb::seconds_since(t0));
      if (info != 0) fmt::print("dsyevd: info {}\n", info);
    }
    report(fmt::format("host LAPACKE_dsyevd, {} BLAS thread(s)", threads), seconds, 1, 0.0);
  }
  {  // the store's workers, each a module's two on one BLAS thread, at once
    openblas_set_num_threads(1);
    std::vector<double> seconds;
    for (int i = 0; i <= repeats; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<std::thread> threads;
      for (int k = 0; k < workers; ++k)
        threads.emplace_back([&] {
          omp_set_num_threads(
              1);  // OpenBLAS's OpenMP threads are per calling thread, as the store sets them
          std::vector<double> w(static_cast<std::size_t>(n));
          for (int b = 0; b < 2; ++b) {
            auto a = m;
            LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', static_cast<int>(n), a.data(),
                           static_cast<int>(n), w.data());
          }
        });
      for (auto& t : threads) t.join();
      if (i > 0) seconds.push_back(rb::seconds_since(t0));
    }
    report(fmt::format("host LAPACKE_dsyevd, {} workers × 2, a thread each", workers), seconds,
           2 * workers, 0.0);
  }
#ifdef REVMERGE_BENCH_CUDA
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    fmt::print("GPU cases not run: no usable CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  fmt::print("device 0: {}\n", prop.name);
  device_case("cusolverDnDsyevd (the store's), one matrix", m, ref, n, 1, 1, repeats,
              [](DeviceSolve& s) { s.syevd(); });
  device_case("cusolverDnDsyevd, a module's two in turn", m, ref, n, 2, 1, repeats,
              [](DeviceSolve& s) { s.syevd(); });
  device_case("cusolverDnXsyevd, a module's two in turn", m, ref, n, 2, 1, repeats,
              [](DeviceSolve& s) { s.xsyev(false); });
  device_case("cusolverDnXsyevBatched, a module's two in one call", m, ref, n, 2, 1, repeats,
              [](DeviceSolve& s) { s.xsyev(true); });
  device_case("cusolverDnDsyevj (tol 1e-14), a module's two", m, ref, n, 2, 1, repeats,
              [](DeviceSolve& s) { s.syevj(1e-14); });
  device_case(fmt::format("cusolverDnDsyevd, {} workers × 2, own streams", workers), m, ref, n, 2,
              workers, repeats, [](DeviceSolve& s) { s.syevd(); });
  device_case(fmt::format("cusolverDnXsyevBatched, {} workers × 2", workers), m, ref, n, 2, workers,
              repeats, [](DeviceSolve& s) { s.xsyev(true); });
#else
  fmt::print("GPU cases not run: built without the CUDA backend\n");
#endif
  return 0;
}
