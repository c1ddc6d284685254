// revmerge._revmerge: the engine for Python. The command lines run in-process through the same
// code as the executable (host/cli/run.hpp); errors become the exceptions below with the
// engine's message; the resident bundle is bound in bundle.cpp.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <sstream>
#include <thread>

#include "backend/blas_core.hpp"
#include "bindings.hpp"
#include "cli/run.hpp"
#include "core/interrupt.hpp"
#include "revmerge/error.hpp"
#include "revmerge/version.hpp"

namespace nb = nanobind;

namespace {

// Runs `revmerge args…` and returns what it printed. The command runs on a thread of its own
// while this one, the GIL released between looks, watches for Ctrl-C: Python only notes a
// signal, so a KeyboardInterrupt becomes the engine's interrupt request (the command stops at
// its next check and removes its temporary outputs, as the program does on SIGINT), then is
// raised here.
std::string run_cli(const std::vector<std::string>& args) {
  std::ostringstream printed;
  std::exception_ptr failure;
  std::mutex m;
  std::condition_variable finished;
  bool done = false;
  std::thread worker([&] {
    try {
      revmerge::cli::run_command_line(args, printed);
    } catch (...) {
      failure = std::current_exception();
    }
    const std::lock_guard<std::mutex> hold(m);
    done = true;
    finished.notify_all();
  });
  bool interrupted = false;
  for (;;) {
    {
      nb::gil_scoped_release unlocked;
      std::unique_lock<std::mutex> hold(m);
      if (finished.wait_for(hold, std::chrono::milliseconds(50), [&] { return done; })) break;
    }
    if (!interrupted && PyErr_CheckSignals() != 0) {  // the KeyboardInterrupt stays pending
      interrupted = true;
      revmerge::request_interrupt();
    }
  }
  {
    nb::gil_scoped_release unlocked;
    worker.join();
  }
  if (interrupted) {
    revmerge::clear_interrupt();
    throw nb::python_error();
  }
  if (failure) std::rethrow_exception(failure);
  return printed.str();
}

}  // namespace

NB_MODULE(_revmerge, m) {
  m.doc() = "revmerge's engine (use the `revmerge` package, not this module)";
  m.attr("__version__") = REVMERGE_VERSION_STRING;
  // The engine's error family, most derived first when translated (the order of registration
  // below is the reverse of the order nanobind tries them).
  static nb::exception<revmerge::error> error(m, "Error", PyExc_RuntimeError);
  static nb::exception<revmerge::io_error> io(m, "IoError", error.ptr());
  static nb::exception<revmerge::format_error> format(m, "FormatError", error.ptr());
  static nb::exception<revmerge::shape_error> shape(m, "ShapeError", error.ptr());
  static nb::exception<revmerge::unsupported_error> unsupported(m, "UnsupportedError", error.ptr());
  static nb::exception<revmerge::usage_error> usage(m, "UsageError", error.ptr());
  static nb::exception<revmerge::device_error> device(m, "DeviceError", error.ptr());
  static nb::exception<revmerge::solver_error> solver(m, "SolverError", error.ptr());
  static nb::exception<revmerge::interrupted> interrupted(m, "Interrupted", error.ptr());
  m.def("run_cli", &run_cli, nb::arg("args"),
        "Runs `revmerge ARGS…` in this process and returns what it printed (its progress goes to "
        "stderr). Raises the command's error as one of this module's exceptions.");
  m.def("blas_kernels", &revmerge::blas_core_name,
        "The OpenBLAS kernel set the CPU backend runs (\"SkylakeX\", \"Haswell\", …): chosen when the "
        "package was imported, as the revmerge program chooses it.");
  revmerge::python::bind_bundle(m);
}
