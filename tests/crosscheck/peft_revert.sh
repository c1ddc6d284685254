#!/usr/bin/env bash
# PEFT loads adapters reverted from a bundle: with P = n − 1 they apply the same delta and give
# the same logits as the originals to 1e-5. Exit 77 (skipped) without torch + peft.
set -euo pipefail
revmerge=$1 src=$2 work=$3
if ! python3 -c 'import torch, peft, transformers' 2>/dev/null; then
  echo "SKIPPED: python3 with torch, transformers and peft is not installed"
  exit 77
fi
rm -rf "$work" && mkdir -p "$work"
"$revmerge" merge -q --basis 7 --out "$work/bundle" "$src"/examples/adapters/*
for task in qa chat; do
  "$revmerge" revert -q "$work/bundle" --task $task --out "$work/$task"
  python3 "$src/tools/check_peft_load.py" "$work/$task" "$src/examples/adapters/$task" \
    --base "$src/examples/tiny-llama" --tol 1e-5
done
