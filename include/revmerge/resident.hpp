#pragma once
/// \file
/// A bundle resident on a device, for serving stacks that switch tasks: opened once, every
/// stored tensor uploaded once in its stored dtype and kept until the object goes; any task's
/// LoRA factors then rebuilt into buffers the caller owns, all the modules asked for in one
/// launch, with the same bits as `revmerge revert` on that device.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "revmerge/bundle.hpp"
#include "revmerge/devices.hpp"
#include "revmerge/rmm.hpp"

namespace revmerge {

class Backend;  // the library's own (host/backend); see open_resident_on

class ResidentBundle {
 public:
  /// Opens bundle folder `dir` (format version 1 or 2) onto `device` — Device::cpu (host
  /// memory), Device::cuda (GPU `gpu`), or Device::automatic — and uploads its tensors. Throws
  /// what Bundle throws for the folder, device_error where the GPU cannot be used.
  ResidentBundle(const std::filesystem::path& dir, Device device, int gpu = 0, int threads = 0);
  ~ResidentBundle();
  ResidentBundle(const ResidentBundle&) = delete;
  ResidentBundle& operator=(const ResidentBundle&) = delete;

  const BundleManifest& manifest() const noexcept;
  /// The backend it lives on ("cpu (…)", "cuda:0 (…)"), and whether its buffers are host memory.
  std::string device_name() const;
  bool on_host() const noexcept;
  /// Bytes it holds on its device: the stored tensors and the call tables.
  std::uint64_t memory_bytes() const noexcept;
  /// The CUDA device index its buffers live on (-1 when on_host()).
  int gpu() const noexcept;

  /// `bytes` of memory on its device (host memory when on_host()), for outputs the caller
  /// wants revmerge to own: freed when the last copy of the pointer goes, which may outlive
  /// this object (the backend stays until then).
  std::shared_ptr<void> allocate(std::size_t bytes);
  /// Waits until the work queued on `stream` (null: the backend's own) has run; returns at once
  /// on the CPU.
  void synchronize(void* stream = nullptr);

  /// Rebuilds task `task`'s factors of `modules` (indices into manifest().modules; empty: every
  /// module, in order): module modules[i]'s A (rank × in) into `a[i]` and B (out × rank) into
  /// `b[i]`, row-major, as `dtype` (F32, F16 or BF16, rounded to nearest even once), zero-padded
  /// to the module's rank. With `fold_scale`, the scale folded into B as the bundle stores it
  /// (an adapter of lora_alpha = rank); without, B divided by the task's scale (the module's
  /// task_scales) before rounding, for a model that applies the task's own alpha / r — throws
  /// unsupported_error for a bundle that does not record the scales. The buffers live in the device's memory (host memory when on_host()).
  /// On the CPU it returns when they are written; on a GPU when the work is queued on `stream`
  /// (a cudaStream_t; null: the backend's own), so what the caller queues there next sees them.
  /// Calls from several threads are safe (they take turns). Each call's table of parts goes
  /// through one of three pinned buffers in turn, so back-to-back calls queue without the host
  /// waiting; the host waits only where the call three before has not run yet. Throws
  /// usage_error for a task, module or dtype out of range or a null or missing buffer.
  void materialize(std::int64_t task, std::span<const std::int64_t> modules, DType dtype,
                   std::span<void* const> a, std::span<void* const> b, void* stream = nullptr,
                   bool fold_scale = true);

  /// Task `task` (by name) written as a PEFT adapter folder at `out` — what `revmerge revert
  /// --task` writes, byte for byte, from the resident tensors (options.dtype, overwrite and
  /// recipe apply; its device and threads are the bundle's). For a server that loads folders, a
  /// path under /dev/shm keeps it in memory. Throws usage_error for an unknown task, and what
  /// writing an adapter throws.
  void save_adapter(const std::string& task, const std::filesystem::path& out, const RevertOptions& options = {});

 private:
  struct State;
  std::unique_ptr<State> s_;
  ResidentBundle(const std::filesystem::path& dir, std::shared_ptr<Backend> backend, int gpu);
  friend std::unique_ptr<ResidentBundle> open_resident_on(const std::filesystem::path& dir,
                                                          std::shared_ptr<Backend> backend);
};

}  // namespace revmerge
