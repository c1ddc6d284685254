#pragma once
// The pieces of the `revmerge._revmerge` extension module, each registering itself.
#include <nanobind/nanobind.h>

namespace revmerge::python {

/// Bundle: a ResidentBundle with PEFT-named, DLPack-exported factors (bundle.cpp).
void bind_bundle(nanobind::module_& m);

}  // namespace revmerge::python
