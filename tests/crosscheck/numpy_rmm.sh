#!/usr/bin/env bash
# Merges the example adapters with revmerge and checks the bundles with the independent numpy
# implementation (tools/rmm_numpy.py). Exit 77 (skipped) without numpy + safetensors.
set -euo pipefail
revmerge=$1 src=$2 work=$3
if ! python3 -c 'import numpy, safetensors' 2>/dev/null; then
  echo "SKIPPED: python3 with numpy and safetensors is not installed (tools/bootstrap.sh installs them)"
  [ "${REVMERGE_REQUIRE_PYTHON_PEERS:-0}" = 1 ] && { echo "FAIL: required here (REVMERGE_REQUIRE_PYTHON_PEERS=1)"; exit 1; }; exit 77
fi
rm -rf "$work" && mkdir -p "$work"
for p in 1 2 4 7; do
  "$revmerge" merge -q --basis $p --out "$work/p$p" "$src"/examples/adapters/*
  python3 "$src/tools/rmm_numpy.py" "$work/p$p"
done
# Mixed ranks and scale rules (real PEFT fixtures share no module set, so a bf16 bundle of the
# examples stands in for dtype coverage; its rounding is measured against f64 numpy).
"$revmerge" merge -q --basis 3 --dtype bf16 --out "$work/bf16" "$src"/examples/adapters/*
python3 "$src/tools/rmm_numpy.py" "$work/bf16" --tol 2e-2
# Format version 2: the budgeted store (rmm and rank modules) against numpy's truncated SVDs.
for b in 0.15 0.3 0.5; do
  "$revmerge" merge -q --method auto --storage $b --device cpu --out "$work/auto$b" "$src"/examples/adapters/*
  python3 "$src/tools/rmm_numpy.py" "$work/auto$b"
done
"$revmerge" merge -q --method rank --storage 0.3 --out "$work/rank" "$src"/examples/adapters/*
python3 "$src/tools/rmm_numpy.py" "$work/rank"
# Tasks added to a bundle: their truncations against numpy's, the old tasks as before.
"$revmerge" add -q "$work/auto0.3" "$src"/examples/adapters/chat --out "$work/added" 2>/dev/null && exit 1  # name in use
"$revmerge" merge -q --method auto --storage 0.3 --device cpu --out "$work/first4" $(ls -d "$src"/examples/adapters/* | head -4)
"$revmerge" add -q "$work/first4" $(ls -d "$src"/examples/adapters/* | tail -4) --out "$work/added"
python3 "$src/tools/rmm_numpy.py" "$work/added"
# Tasks from one initialisation: auto keeps a row basis shared by the tasks (shared_rows) …
python3 "$src/tools/eval/lora_like.py" --out "$work/lora-like" --tasks 4 --rank 8 --dim 128 >/dev/null
"$revmerge" merge -q --method auto --storage 0.5 --device cpu --representations rmm,shared_rows \
  --out "$work/shared" "$work"/lora-like/*
grep -q '"representation": "shared_rows"' "$work/shared/manifest.json" || { echo "FAIL: no shared_rows module"; exit 1; }
python3 "$src/tools/rmm_numpy.py" "$work/shared"
# … and, where half of B's columns are shared too, row and column bases (shared).
python3 "$src/tools/eval/lora_like.py" --out "$work/lora-cols" --tasks 4 --rank 8 --dim 128 --b-shared columns >/dev/null
"$revmerge" merge -q --method auto --storage 0.5 --device cpu --out "$work/both" "$work"/lora-cols/*
grep -q '"representation": "shared"' "$work/both/manifest.json" || { echo "FAIL: no shared module"; exit 1; }
python3 "$src/tools/rmm_numpy.py" "$work/both"
