#pragma once
/// \file
/// The revmerge error family. Anything a user or a file can cause is one of these; `main`
/// catches `revmerge::error`, prints `what()` and exits non-zero.
#include <stdexcept>
#include <string>

namespace revmerge {

/// Base of every error revmerge throws on purpose. `what()` is a complete, user-facing message.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// An operating-system call failed (open, mmap, write, rename, ...); the message names the
/// path and the OS error.
class io_error : public error {
 public:
  using error::error;
};

/// A file's contents break its format (safetensors, JSON, PEFT config, index, bundle).
class format_error : public error {
 public:
  using error::error;
};

/// Tensors or modules whose shapes, ranks or names do not fit together.
class shape_error : public error {
 public:
  using error::error;
};

/// Valid input that revmerge does not handle (yet): DoRA, embedding LoRA, an unknown dtype, ...
class unsupported_error : public error {
 public:
  using error::error;
};

/// A command-line option or API argument that is wrong by itself.
class usage_error : public error {
 public:
  using error::error;
};

/// A device runtime or library call failed (CUDA, cuBLAS, cuSOLVER, ...).
class device_error : public error {
 public:
  using error::error;
};

/// A numerical solver reported failure (non-convergence, info != 0) or met non-finite data.
class solver_error : public error {
 public:
  using error::error;
};

/// The user stopped the job (SIGINT / SIGTERM); temporary outputs have been removed.
class interrupted : public error {
 public:
  using error::error;
};

}  // namespace revmerge
