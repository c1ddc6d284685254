#!/usr/bin/env bash
# The README's main command: builds revmerge and runs it on the shipped example.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
revmerge=build/release/host/cli/revmerge
set -x
"$revmerge" devices
"$revmerge" info examples/tiny-llama
for task in examples/adapters/*/; do "$revmerge" info "$task"; done
