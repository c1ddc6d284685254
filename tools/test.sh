#!/usr/bin/env bash
# The README's test command; .ci/run runs exactly this:
#  1. release build (CUDA backend too when a toolkit is found) and the whole default suite;
#  2. the same suite under AddressSanitizer + UBSan (CPU only; Python cross-checks excluded);
#  3. a short libFuzzer smoke run over every parser (tools/fuzz.sh).
# REVMERGE_TEST_QUICK=1 runs step 1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh
cmake --preset release
cmake --build --preset release -j "$(nproc)"
ctest --preset release -j "$(nproc)"
[ "${REVMERGE_TEST_QUICK:-0}" = 1 ] && exit 0

cmake --preset asan
cmake --build --preset asan -j "$(nproc)"
ctest --preset asan -j "$(nproc)"

tools/fuzz.sh 10
