#!/usr/bin/env bash
# The README's RMM flow through the CLI on the shipped example, with its failure modes.
# Usage: rmm_roundtrip.sh REVMERGE SOURCE_DIR WORK_DIR
set -euo pipefail
# No `cmd | grep -q`: grep's early exit would fail the pipeline through SIGPIPE.
revmerge=$1 src=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
adapters=("$src"/examples/adapters/*)
fail() { echo "FAIL: $*"; exit 1; }
expect_error() {  # expect_error REGEX CMD...: non-zero exit and the message matches
  local regex=$1; shift
  if "$@" >"$work/out.txt" 2>&1; then fail "succeeded: $*"; fi
  grep -Eq -e "$regex" "$work/out.txt" || { cat "$work/out.txt"; fail "message does not match '$regex'"; }
}

"$revmerge" merge --method rmm --basis 2 --out "$work/bundle" "${adapters[@]}" >"$work/merge.txt"
grep -q "RMM bundle .*: 8 tasks, basis 2, 14 modules, stored as F32" "$work/merge.txt" || fail "merge header"
grep -q "storage: .* in F32 against .* in the tasks' own factors (0.500×, 50.0% saved)" "$work/merge.txt" ||
  fail "storage in bytes"
# A basis of 7 for 8 tasks stores more than the adapters: said, with what to do.
"$revmerge" merge --basis 7 --out "$work/b7" "${adapters[@]}" >"$work/b7.txt" 2>"$work/b7.err"
grep -q "storage: .* (1.438×, 43.8% larger than the inputs)" "$work/b7.txt" || fail "storage above the inputs"
grep -q "revmerge: warning: the bundle's tensors take .* 1.44× the .* of the tasks' own factors: a basis of 7 for 8 tasks" \
  "$work/b7.err" || { cat "$work/b7.err"; fail "no warning for a bundle larger than its inputs"; }

expect_error "bundle: already exists \(pass --force" "$revmerge" merge --basis 2 --out "$work/bundle" "${adapters[@]}"
"$revmerge" merge --basis 3 --out "$work/bundle" --force -q "${adapters[@]}"
grep -q "basis 3" <<<"$("$revmerge" inspect "$work/bundle")" || fail "--force did not replace the bundle"
expect_error "--basis 8 is outside 1 .. n − 1 = 7" "$revmerge" merge --basis 8 --out "$work/b8" "${adapters[@]}"
expect_error "at least 2 adapters" "$revmerge" merge --basis 1 --out "$work/b1" "${adapters[0]}"
expect_error "--basis: an option of --method rmm only" "$revmerge" merge --method ties --basis 1 --out "$work/bt" "${adapters[@]}"
expect_error "is missing from task" "$revmerge" merge --basis 1 --out "$work/bm" \
  "$src/tests/fixtures/peft/plain" "$src/tests/fixtures/peft/rslora"
for d in b8 b1 bt bm; do [ ! -e "$work/$d" ] || fail "output $d written after an error"; done

# A config file naming the tasks (paths relative to it).
cat >"$work/merge.yaml" <<YAML
basis: 2
dtype: bf16
tasks:
  - {name: first, adapter: $src/examples/adapters/qa}
  - {name: second, adapter: $src/examples/adapters/code}
  - adapter: $src/examples/adapters/math
YAML
"$revmerge" merge --config "$work/merge.yaml" --out "$work/cfg" >"$work/cfg.txt"
grep -q "3 tasks, basis 2, 14 modules, stored as BF16" "$work/cfg.txt" || fail "config merge"
# 1.125× the inputs' numbers, in half their bytes.
grep -q "(0.562×, 43.8% saved)" "$work/cfg.txt" || fail "bf16 bundle of f32 inputs: storage in bytes"
grep -q '"name": "math"' <<<"$("$revmerge" inspect --json "$work/cfg")" || fail "task named after its folder"
echo "unknown: 1" >>"$work/merge.yaml"
expect_error "merge.yaml: unknown key 'unknown'" "$revmerge" merge --config "$work/merge.yaml" --out "$work/c2"

"$revmerge" revert "$work/bundle" --task qa --out "$work/qa" >/dev/null
grep -q "r: 16   lora_alpha: 16" <<<"$("$revmerge" info "$work/qa")" || fail "reverted adapter config"
expect_error "--task: 'nope' is not in" "$revmerge" revert "$work/bundle" --task nope --out "$work/nope"
"$revmerge" revert "$work/bundle" --all --out "$work/all" >/dev/null
[ "$(ls "$work/all" | wc -l)" -eq 8 ] || fail "--all wrote $(ls "$work/all" | wc -l) tasks"
grep -q "worst modules" <<<"$("$revmerge" inspect "$work/bundle" --top 3)" || fail "inspect"

# The budgeted store: auto under a quarter of the numbers, reverted and inspected.
"$revmerge" merge --method auto --storage 25% --device cpu --out "$work/auto" "${adapters[@]}" >"$work/auto.txt"
grep -Eq "bundle .* \(method auto\): 8 tasks, 14 modules: .*; stored as F32" "$work/auto.txt" || { cat "$work/auto.txt"; fail "auto header"; }
grep -q '"format_version": 2' "$work/auto/manifest.json" || fail "auto writes format version 2"
ratio=$(python3 -c "import json; print(json.load(open('$work/auto/manifest.json'))['storage_ratio'])")
python3 -c "import sys; sys.exit(0 if $ratio <= 0.25 else 1)" || fail "auto stored $ratio of the numbers, above 0.25"
"$revmerge" revert "$work/auto" --task qa --out "$work/auto-qa" >/dev/null
grep -q "r: 16   lora_alpha: 16" <<<"$("$revmerge" info "$work/auto-qa")" || fail "reverted rank-module adapter config"
grep -q "stored as" <<<"$("$revmerge" inspect "$work/auto" --top 3)" || fail "inspect of a version 2 bundle"
expect_error "--storage '2 parsecs'" "$revmerge" merge --method auto --storage "2 parsecs" --out "$work/a2" "${adapters[@]}"
expect_error "--storage '1.5': a fraction above 1" "$revmerge" merge --method rank --storage 1.5 --out "$work/a2" "${adapters[@]}"
expect_error "give either --storage .a budget. or --max-error" "$revmerge" merge --method auto --out "$work/a2" "${adapters[@]}"
expect_error "--storage: not an option of --method rmm" "$revmerge" merge --basis 1 --storage 0.5 --out "$work/a2" "${adapters[@]}"
[ ! -e "$work/a2" ] || fail "output written after a bad budget"
# A config naming the method and budget.
printf 'method: auto\nstorage: 30%%\ntasks:\n  - {name: a, adapter: %s}\n  - {name: b, adapter: %s}\n' \
  "${adapters[0]}" "${adapters[1]}" >"$work/auto.yaml"
"$revmerge" merge -q --config "$work/auto.yaml" --device cpu --out "$work/cfg-auto"
grep -q '"method": "auto"' "$work/cfg-auto/manifest.json" || fail "config with method auto"
sed -i 's/method: auto/method: ties/' "$work/auto.yaml"
expect_error "auto.yaml: 'storage': a setting of --method auto and rank only" \
  "$revmerge" merge --config "$work/auto.yaml" --out "$work/cfg-ties"
# More tasks into a bundle without the old tasks' adapters.
"$revmerge" merge -q --method auto --storage 0.3 --device cpu --out "$work/four" "${adapters[@]:0:4}"
"$revmerge" add "$work/four" "${adapters[@]:4:2}" --out "$work/six" >"$work/add.txt"
grep -q "tasks added later (each its own truncation per module): 2 after the first 4" "$work/add.txt" || { cat "$work/add.txt"; fail "add report"; }
"$revmerge" revert -q "$work/six" --all --out "$work/six-tasks"
[ "$(ls "$work/six-tasks" | wc -l)" -eq 6 ] || fail "add: --all wrote $(ls "$work/six-tasks" | wc -l) tasks"
expect_error "task name 'chat' is used twice" "$revmerge" add "$work/six" "${adapters[0]}" --out "$work/seven"
[ ! -e "$work/seven" ] || fail "add wrote an output after an error"
echo "rmm round trip: ok"
