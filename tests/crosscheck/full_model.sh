#!/usr/bin/env bash
# A merged adapter written as a full model (--full-model) equals PEFT's merge_and_unload of the
# same merged adapter onto the base, weight by weight and in logits, and transformers loads it;
# so do GPT-2's Conv1D weights (stored in × out): its adapters, and full fine-tunes compressed.
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
# Adapters of a base whose weights are stored in × out (GPT-2's Conv1D, PEFT's fan_in_fan_out):
# the bundle's full models add each delta transposed, square modules included (attn.c_proj),
# and its reverted adapters keep the flag.
python3 - "$work/gpt2" <<'PY'
import sys, torch, peft
from transformers import GPT2Config, GPT2LMHeadModel
out = sys.argv[1]
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)).save_pretrained(f"{out}/base")
for i in range(2):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,
                             init_lora_weights=False)
    model = peft.get_peft_model(GPT2LMHeadModel.from_pretrained(f"{out}/base"), config)
    torch.manual_seed(10 + i)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn_like(p) * 0.1
    model.save_pretrained(f"{out}/task{i}")
    model.merge_and_unload().save_pretrained(f"{out}/ft{i}")  # the same task as a full fine-tune
PY
g=$work/gpt2
"$revmerge" info --json "$g/base" | python3 -c '
import json, sys
j = json.load(sys.stdin)
qkv = [m for m in j["linear_modules"] if m["name"] == "attn.c_attn"][0]
assert j["weights_stored_in_by_out"] and (qkv["out"], qkv["in"]) == (96, 32), (j["weights_stored_in_by_out"], qkv)
assert j["config"]["num_hidden_layers"] == 2 and j["config"]["hidden_size"] == 32, j["config"]
print("info of a gpt2 model: its modules out × in, stored in × out")'
for method in "--basis 1" "--method rank --storage 1"; do
  "$revmerge" merge -q $method --out "$g/bundle" --force "$g/task0" "$g/task1" 2>/dev/null
  "$revmerge" revert -q "$g/bundle" --task task1 --full --base "$g/base" --out "$g/task1-model" --force
  "$revmerge" revert -q "$g/bundle" --task task1 --out "$g/task1-adapter" --force
  grep -q '"fan_in_fan_out": true' "$g/task1-adapter/adapter_config.json" ||
    { echo "FAIL ($method): the reverted adapter lost fan_in_fan_out"; exit 1; }
  echo -n "fan_in_fan_out ($method) revert --full against the task's own adapter: "
  python3 "$src/tools/check_full_model.py" --base "$g/base" --adapter "$g/task1" --model "$g/task1-model" --tol 1e-5
done
# mergekit's MODEL+LORA of it: the adapter's delta goes into the Conv1D weight transposed, as
# PEFT's merge_and_unload puts it.
"$revmerge" merge -q --method linear --out "$g/model+lora" --force "$g/base+$g/task0"
echo -n "MODEL+LORA of a gpt2 model against PEFT's merge_and_unload: "
python3 "$src/tools/check_full_model.py" --base "$g/base" --adapter "$g/task0" --model "$g/model+lora" --tol 1e-5
# Full fine-tunes of it: `compress` writes fan_in_fan_out factors that PEFT merges back into the
# fine-tune (its deltas are rank 4), and RMM or rank over the fine-tunes (compressed first)
# reverts each task to its fine-tune.
"$revmerge" compress -q --base "$g/base" --model "$g/ft0" --rank 4 --out "$g/ft0-adapter" --force
grep -q '"fan_in_fan_out": true' "$g/ft0-adapter/adapter_config.json" ||
  { echo "FAIL: the compressed adapter of a gpt2 fine-tune does not say fan_in_fan_out"; exit 1; }
echo -n "compress of a gpt2 fine-tune, merged by PEFT, against the fine-tune: "
python3 "$src/tools/check_full_model.py" --base "$g/base" --adapter "$g/ft0-adapter" --model "$g/ft0" --tol 1e-5
for method in "--basis 1" "--method rank --storage 1"; do
  "$revmerge" merge -q $method --base "$g/base" --rank 4 --out "$g/ft-bundle" --force "$g/ft0" "$g/ft1"
  "$revmerge" revert -q "$g/ft-bundle" --task ft1 --full --base "$g/base" --out "$g/ft1-again" --force
  "$revmerge" inspect "$g/ft-bundle" | grep -q "^fan_in_fan_out: the base stores its weights in × out" ||
    { echo "FAIL ($method): inspect does not say fan_in_fan_out"; exit 1; }
  echo -n "$method over gpt2 fine-tunes, revert --full against the fine-tune: "
  python3 "$src/tools/check_full_model.py" --base "$g/base" --adapter "$g/task1" --model "$g/ft1-again" --tol 1e-5
done
# A fine-tune that changed its embeddings, head and norms too (the mergekit golden set's ft0):
# at full rank with --save-changed, PEFT's merge of the adapter is the fine-tune everywhere;
# without it the kept modules are the base's, and the same check must fail.
mk=$src/tests/fixtures/golden/mergekit
"$revmerge" compress -q --device cpu --base "$mk/base" --model "$mk/ft0" --rank 16 --save-changed \
  --out "$work/ft0-whole" --force
echo -n "compress --save-changed at full rank, merged by PEFT, against the fine-tune: "
python3 "$src/tools/check_full_model.py" --base "$mk/base" --adapter "$work/ft0-whole" --model "$mk/ft0" --tol 1e-5
"$revmerge" compress -q --device cpu --base "$mk/base" --model "$mk/ft0" --rank 16 \
  --out "$work/ft0-factors" --force 2>/dev/null
echo -n "the same without --save-changed (must differ): "
if python3 "$src/tools/check_full_model.py" --base "$mk/base" --adapter "$work/ft0-factors" --model "$mk/ft0" \
  --tol 1e-5; then
  echo "FAIL: an adapter without the changed embeddings, head and norms matched the fine-tune"; exit 1
fi
