#!/usr/bin/env bash
# The README's main command: builds revmerge and runs the RMM job on the shipped example —
# merge eight PEFT adapters into a reversible bundle, report storage and errors, revert a task.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"  # the pinned Python peers (tools/requirements.txt)
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target revmerge  # only what the example runs
revmerge=build/release/host/cli/revmerge
out=build/example
rm -rf "$out" && mkdir -p "$out"
set -x
"$revmerge" info examples/adapters/qa
"$revmerge" merge --method rmm --basis 2 --out "$out/bundle" examples/adapters/*
"$revmerge" revert "$out/bundle" --task qa --out "$out/qa"
"$revmerge" info "$out/qa"
