#!/usr/bin/env bash
# Every mergekit golden case through the CLI, from mergekit's own YAML config: the written model
# must equal what mergekit wrote (tests/fixtures/golden/mergekit, made by tools/make_golden.py;
# DARE with the same counter-based mask, given here by --seed).
# Usage: mergekit_golden.sh REVMERGE SOURCE_DIR WORK_DIR
set -euo pipefail
revmerge=$1 src=$2 work=$3
python3 -c "import numpy, safetensors" 2>/dev/null || { echo "SKIP: needs numpy and safetensors"; [ "${REVMERGE_REQUIRE_PYTHON_PEERS:-0}" = 1 ] && { echo "FAIL: required here (REVMERGE_REQUIRE_PYTHON_PEERS=1)"; exit 1; }; exit 77; }
rm -rf "$work" && mkdir -p "$work"
golden=$src/tests/fixtures/golden/mergekit
cases=$(python3 -c "import json,sys; [print(c['name'], c['seed']) for c in json.load(open(sys.argv[1]))['cases'] if not c.get('bf16')]" "$golden/cases.json")
while read -r name seed; do
  "$revmerge" merge --config "$golden/$name.yml" --seed "$seed" --out "$work/$name" -q
  echo -n "$name: "
  python3 "$src/tools/compare_models.py" "$work/$name" "$golden/out/$name" --tol 1e-5
done <<<"$cases"
# The same merges from command-line options instead of the config.
g=$golden
flags() {
  case $1 in
    della) echo "--method della --weights 1,0.7,0.4 --density 0.5,0.4,0.6 --epsilon 0.1,0.2,0.15 --seed 3" ;;
    breadcrumbs) echo "--method breadcrumbs --weights 1,0.5,0.8 --density 0.6,0.5,0.7 --gamma 0.05,0.1,0.02" ;;
    sce_topk) echo "--method sce --select-topk 0.4 --base $g/base $g/ft0 $g/ft1 $g/ft2" ;;
    nuslerp_rows) echo "--method nuslerp --no-flatten --weights 0.3,0.7 $g/ft1 $g/ft2" ;;
    karcher_nobase) echo "--method karcher --max-iter 4 --tol 1e-6 $g/ft0 $g/ft1 $g/ft2" ;;
    ramplus_tl) echo "--method ramplus_tl --epsilon 0.025 --ram-r 0.5 --ram-alpha 0.9 --base $g/base $g/ft0 $g/ft1 $g/ft2" ;;
    ties_lora) echo "--method ties --density 0.6 --weights 1,0.7 --base $g/base $g/ft0+$g/lora/a $g/ft1" ;;
  esac
}
for name in della breadcrumbs sce_topk nuslerp_rows karcher_nobase ramplus_tl ties_lora; do
  args=$(flags "$name")
  case $name in della|breadcrumbs) args="$args --base $g/base $g/ft0 $g/ft1 $g/ft2" ;; esac
  # shellcheck disable=SC2086
  "$revmerge" merge $args --out "$work/cli_$name" -q
  echo -n "$name from options: "
  python3 "$src/tools/compare_models.py" "$work/cli_$name" "$golden/out/$name" --tol 1e-5
done
# bf16 checkpoints (tools/bf16_parity.py states the claims): with mergekit computing in f32,
# the same values but for trim ties; with mergekit computing in bf16 (`dtype: bfloat16`),
# revmerge's arithmetic unchanged (the same bytes) and closer to the exact merge.
if python3 -c "import torch" 2>/dev/null; then
  for name in ties_bf16 ties_bf16_compute task_arithmetic_bf16; do
    "$revmerge" merge --config "$golden/$name.yml" --out "$work/$name" -q
  done
  python3 "$src/tools/bf16_parity.py" ties "$work/ties_bf16" "$golden/out/ties_bf16" "$golden/bf16" 0.3
  cmp "$work/ties_bf16/model.safetensors" "$work/ties_bf16_compute/model.safetensors"
  echo "ties with dtype bfloat16: revmerge writes the same bytes as with float32"
  python3 "$src/tools/bf16_parity.py" closer "$work/task_arithmetic_bf16" "$golden/out/task_arithmetic_bf16" \
    "$golden/bf16" 1,0.5,-0.3
  "$revmerge" merge --config "$golden/task_arithmetic_lora_bf16.yml" --out "$work/task_arithmetic_lora_bf16" -q
  python3 "$src/tools/bf16_parity.py" lora "$work/task_arithmetic_lora_bf16" \
    "$golden/out/task_arithmetic_lora_bf16" "$golden"
else
  echo "bf16 parity: NOT RUN (needs torch to read bf16)"
  [ "${REVMERGE_REQUIRE_PYTHON_PEERS:-0}" = 1 ] && { echo "FAIL: required here"; exit 1; }
fi
# Stacked layers: the layer count in config.json is the stacked one, as mergekit writes it.
for name in passthrough_stack slerp_slices ties_slices; do
  python3 - "$work/$name/config.json" "$golden/out/$name/config.json" <<'PY'
import json, sys
got, want = (json.load(open(p))["num_hidden_layers"] for p in sys.argv[1:])
assert got == want, f"num_hidden_layers {got}, mergekit wrote {want}"
PY
done
echo "stacked layer counts as mergekit's"
# A model card as mergekit writes one: the merged models as base_model, the merge tag, the config.
python3 - "$work/ties/README.md" "$golden/ties.yml" "$golden" <<'PY'
import os, sys
card, config, golden = open(sys.argv[1]).read(), open(sys.argv[2]).read(), sys.argv[3]
front = card.split("---\n")[1]
for model in ["base", "ft0", "ft1", "ft2"]:
    assert f'- "{os.path.normpath(os.path.abspath(os.path.join(golden, model)))}"' in front, (model, front)
assert "tags:\n- merge\n" in front and "`ties` method" in card and config in card, card
print("model card: base_model, tags and config")
PY
# MODEL+LORA (ties_lora, slerp_lora_base above): the merged models' folder is gone, and the recipe
# names the input by its model and adapter.
if ls -d "$work"/*.lora-applied* "$work"/.*.lora-applied* 2>/dev/null; then
  echo "FAIL: a MODEL+LORA folder is left beside the outputs"; exit 1
fi
python3 - "$work/ties_lora/revmerge_recipe.json" "$golden" <<'PY'
import json, os, sys
r, golden = json.load(open(sys.argv[1])), sys.argv[2]
want = os.path.join(golden, "ft0") + "+" + os.path.join(golden, "lora", "a")
assert r["inputs"][0] == {"name": "ft0+a", "path": os.path.normpath(want.split("+")[0]) + "+" +
                          os.path.normpath(want.split("+")[1])}, r["inputs"]
print("MODEL+LORA: recorded by its model and adapter, nothing left behind")
PY
# The config and the model files travel with the model.
cmp "$golden/base/config.json" "$work/ties/config.json"
# The recipe holds the config as read and the command with its seed (mergekit keeps the config).
python3 - "$work/dare_ties/revmerge_recipe.json" "$golden/dare_ties.yml" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["config"] == open(sys.argv[2]).read(), "the recipe's config is not the file's text"
assert r["method"] == "dare_ties" and "--seed" in r["command"], r
assert r["parameters"]["seed"] == r["command"][r["command"].index("--seed") + 1], r["parameters"]
print("recipe: config, command and seed recorded")
PY
