#!/usr/bin/env bash
# The README's test command; .ci/run runs exactly this:
#  1. release build (CUDA backend too when a toolkit is found), the whole default suite, then the
#     LLM-sized cases (label `slow`);
#  2. `pip install .` into a scratch folder and the Python package's tests against it
#     (tools/pip-check.sh);
#  3. the same suite under AddressSanitizer + UBSan (CPU only; Python cross-checks excluded);
#  4. a short libFuzzer smoke run over every parser (tools/fuzz.sh).
# Every skipped test is listed with its reason at the end.
# REVMERGE_TEST_QUICK=1 runs step 1 only (and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"  # the pinned Python peers (tools/requirements.txt)
# Here the cross-checks against numpy, PEFT and transformers must run: a missing package fails
# them instead of skipping them.
export REVMERGE_REQUIRE_PYTHON_PEERS=1
cmake --preset release
cmake --build --preset release -j "$(nproc)"
junits=()
ctest --preset release -j "$(nproc)" --output-junit "$PWD/build/release/junit-default.xml"
junits+=(build/release/junit-default.xml)
ctest --test-dir build/release -L slow --output-on-failure --no-tests=error \
      --output-junit "$PWD/build/release/junit-slow.xml"
junits+=(build/release/junit-slow.xml)
report_skipped() { python3 tools/skipped_tests.py "${junits[@]}"; }
if [ "${REVMERGE_TEST_QUICK:-0}" = 1 ]; then
  echo "REVMERGE_TEST_QUICK=1: pip install ., the sanitizer build and the fuzz run were NOT run"
  report_skipped
  exit 0
fi

tools/pip-check.sh

cmake --preset asan
cmake --build --preset asan -j "$(nproc)"
ctest --preset asan -j "$(nproc)" --output-junit "$PWD/build/asan/junit.xml"
junits+=(build/asan/junit.xml)

tools/fuzz.sh 10
report_skipped
