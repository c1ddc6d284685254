#!/usr/bin/env bash
# A merged adapter written as a full model (--full-model) equals PEFT's merge_and_unload of the
# same merged adapter onto the base, weight by weight and in logits, and transformers loads it.
# Exit 77 (skipped) without torch + peft.
set -euo pipefail
revmerge=$1 src=$2 work=$3
if ! python3 -c 'import torch, peft, transformers' 2>/dev/null; then
  echo "SKIPPED: python3 with torch, transformers and peft is not installed"
  [ "${REVMERGE_REQUIRE_PYTHON_PEERS:-0}" = 1 ] && { echo "FAIL: required here (REVMERGE_REQUIRE_PYTHON_PEERS=1)"; exit 1; }; exit 77
fi
rm -rf "$work" && mkdir -p "$work"
base=$src/examples/tiny-llama
adapters=("$src"/examples/adapters/{chat,code,math,qa})
for method in ties dare_ties cat; do
  args=(--method "$method" --weights 1,0.5,-0.5,1 -q)
  [ "$method" = cat ] || args+=(--density 0.5)
  "$revmerge" merge "${args[@]}" --out "$work/$method-adapter" "${adapters[@]}"
  "$revmerge" merge "${args[@]}" --full-model --base "$base" --out "$work/$method-model" "${adapters[@]}"
  echo -n "$method: "
  python3 "$src/tools/check_full_model.py" --base "$base" --adapter "$work/$method-adapter" \
    --model "$work/$method-model" --tol 1e-5
done
# An RMM bundle's task reverted straight to a full model (revert --full) equals PEFT's
# merge_and_unload of the task's own adapter (P = n − 1 reconstructs it) and of its reverted adapter.
"$revmerge" merge -q --basis 7 --out "$work/bundle" "$src"/examples/adapters/*
"$revmerge" revert -q "$work/bundle" --task qa --full --base "$base" --out "$work/qa-model"
"$revmerge" revert -q "$work/bundle" --task qa --out "$work/qa-adapter"
for adapter in "$src/examples/adapters/qa" "$work/qa-adapter"; do
  echo -n "revert --full against $(basename "$(dirname "$adapter")")/$(basename "$adapter"): "
  python3 "$src/tools/check_full_model.py" --base "$base" --adapter "$adapter" --model "$work/qa-model" --tol 1e-5
done
