#pragma once
// The budgeted store's work on one module (store_merge.cpp runs it for every module): pass 1
// measures what each representation would store and lose, pass 2 writes the chosen one with its
// errors measured on the stored values.
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "methods/adapter_set.hpp"
#include "methods/store/allocation.hpp"
#include "methods/store/shared_basis.hpp"
#include "methods/store/step_timing.hpp"
#include "revmerge/bundle.hpp"
#include "revmerge/safetensors.hpp"

namespace revmerge {

/// Numbers the tasks' own factors of a module hold.
double raw_numbers(const PlannedModule& pm);

// What pass 1 keeps of a module: each task's spectrum, and for each fixed-size option — RMM at
// a pair (p_A, p_B), a shared row basis of K directions, or shared row and column bases of
// (Kv, Ku) directions — its numbers, per-task squared absolute errors and worst relative error.
struct Measured {
  std::vector<std::vector<double>> sigma_sq;
  struct Option {
    Representation kind;
    std::array<std::int64_t, 2> p;  // rmm: (p_A, p_B); shared: (Kv, Ku)
    std::int64_t k;                 // shared_rows
    double numbers;
    std::vector<double> error_sq;
    double worst;
    /// rmm: per side (A, B) each task's relative factor error ‖X̂ − X‖/‖X‖ (else empty).
    std::array<std::vector<double>, 2> factor_error{};
  };
  std::vector<Option> options;
};

/// Measurements as bytes and back, exactly (what workers of one store exchange, so every one
/// allocates from the same numbers).
std::string measured_bytes(const std::vector<Measured>& measured);
std::vector<Measured> measured_from_bytes(const std::string& bytes);

/// Pass 1 of one module: every task's spectrum; with a backend, RMM with each P of `candidates`
/// per side (one run at the largest, on be's default stream); with `shared_rows`, the shared row
/// basis at every K; with `shared`, both shared bases at a grid of (Kv, Ku) (either needs the
/// backend: their Grams and eigensolves run there, on `shared_stream`).
/// `bases`, where given, receives the shared bases found (their maps only: bytes() says what
/// they hold), so pass 2 can store them without finding them again.
Measured measure(Backend* be, const PlannedModule& pm, const std::vector<TaskFactors>& f,
                 const std::vector<std::int64_t>& candidates, DType storage, int threads,
                 bool shared_rows, bool shared, SharedBasis* bases = nullptr, Stream shared_stream = {},
                 const StepTiming& timing = {});

/// Memory a kept SharedBasis holds.
std::uint64_t shared_basis_bytes(const SharedBasis& s);

/// Pass 2: module pm written as the RMM option `chosen` (pass 1's: its basis sizes (A, B) and the
/// errors measured then on the same stored values, reported as they are), as each task's truncation to
/// kept[t] directions, as a shared row basis of k directions, or as shared bases of k = (Kv, Ku)
/// directions; each returns the manifest entry.
BundleModule store_rmm(Backend& be, const PlannedModule& pm, const std::vector<TaskFactors>& f,
                       const Measured& measured, const Measured::Option& chosen, DType storage,
                       SafetensorsWriter& writer);
BundleModule store_rank(const PlannedModule& pm, const std::vector<TaskFactors>& f,
                        const std::vector<std::int64_t>& kept, DType storage, SafetensorsWriter& writer,
                        int threads);
/// The shared writers take pass 1's bases where it kept them (null: found again on `be`, bitwise
/// alike).
BundleModule store_shared(Backend& be, Stream stream, const PlannedModule& pm, const std::vector<TaskFactors>& f,
                          std::int64_t k, DType storage, SafetensorsWriter& writer, int threads,
                          const SharedBasis* found = nullptr);
BundleModule store_shared_basis(Backend& be, Stream stream, const PlannedModule& pm,
                                const std::vector<TaskFactors>& f, std::array<std::int64_t, 2> k, DType storage,
                                SafetensorsWriter& writer, const SharedBasis* found = nullptr);

/// The bundle's tensors for the modules' choices.
std::vector<TensorSpec> tensor_specs(const std::vector<PlannedModule>& plan,
                                     const std::vector<ModuleChoice>& choice,
                                     const std::vector<Measured>& measured, std::int64_t n, DType storage);

}  // namespace revmerge
