#!/usr/bin/env bash
# PEFT loads adapters reverted from a bundle: with P = n − 1 they apply the same delta and give
# the same logits as the originals to 1e-5. Exit 77 (skipped) without torch + peft.
set -euo pipefail
revmerge=$1 src=$2 work=$3
if ! python3 -c 'import torch, peft, transformers' 2>/dev/null; then
  echo "SKIPPED: python3 with torch, transformers and peft is not installed"
  [ "${REVMERGE_REQUIRE_PYTHON_PEERS:-0}" = 1 ] && { echo "FAIL: required here (REVMERGE_REQUIRE_PYTHON_PEERS=1)"; exit 1; }; exit 77
fi
rm -rf "$work" && mkdir -p "$work"
"$revmerge" merge -q --basis 7 --out "$work/bundle" "$src"/examples/adapters/*
# The real-PEFT set: four scale rules and mixed ranks, on the fixtures' tiny Llama.
"$revmerge" merge -q --basis 3 --out "$work/set" "$src"/tests/fixtures/peft-set/*
pairs=()
for task in plain rslora patterns rank6-bf16; do
  "$revmerge" revert -q "$work/set" --task $task --out "$work/set-$task"
  pairs+=("$work/set-$task" "$src/tests/fixtures/peft-set/$task")
done
python3 "$src/tools/check_peft_load.py" --tol 1e-5 "${pairs[@]}"
pairs=()
for task in qa chat; do
  "$revmerge" revert -q "$work/bundle" --task $task --out "$work/$task"
  pairs+=("$work/$task" "$src/examples/adapters/$task")
done
python3 "$src/tools/check_peft_load.py" --base "$src/examples/tiny-llama" --tol 1e-5 "${pairs[@]}"
