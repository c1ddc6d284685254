#!/usr/bin/env bash
# Builds revmerge (release preset: CUDA backend too when a toolkit is found) and runs the
# whole default test suite. The README's test command; .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh
cmake --preset release
cmake --build --preset release -j "$(nproc)"
ctest --preset release -j "$(nproc)"
