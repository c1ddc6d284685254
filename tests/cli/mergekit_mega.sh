#!/usr/bin/env bash
# A mergekit-mega config (several YAML documents, each a merge into its out_path) through
# `revmerge merge --config`: the documents run in the order their outputs are read, whatever the
# file's order; the result is what the same merges give one config at a time; outputs that exist
# are kept (--force merges them again); a cycle is refused before anything is written.
# Usage: mergekit_mega.sh REVMERGE SOURCE_DIR WORK_DIR
set -euo pipefail
revmerge=$1 src=$2 work=$3
g=$src/tests/fixtures/golden/mergekit
rm -rf "$work" && mkdir -p "$work"
cd "$work"
# The second document is the first merge: the first reads its output.
cat > mega.yml <<EOF
merge_method: ties
base_model: $g/base
models:
  - model: step-one
    parameters: {weight: 1.0, density: 0.5}
  - model: $g/ft2
    parameters: {weight: 0.5, density: 0.5}
dtype: float32
out_path: step-two
---
merge_method: slerp
base_model: $g/ft0
models:
  - model: $g/ft0
  - model: $g/ft1
parameters: {t: 0.3}
dtype: float32
out_path: step-one
EOF
"$revmerge" merge --config mega.yml -q
[ -f step-one/model.safetensors ] && [ -f step-two/model.safetensors ] || { echo "FAIL: outputs missing"; exit 1; }
# The same merges one at a time.
sed -n '/^---$/,$p' mega.yml | sed '1d;/^out_path/d' > one.yml
sed -n '1,/^---$/p' mega.yml | sed '$d;/^out_path/d;s#model: step-one#model: by-hand-one#' > two.yml
"$revmerge" merge --config one.yml --out by-hand-one -q
"$revmerge" merge --config two.yml --out by-hand-two -q
cmp step-one/model.safetensors by-hand-one/model.safetensors
cmp step-two/model.safetensors by-hand-two/model.safetensors
echo "mega: two merges in dependency order, the bytes of the same merges one at a time"
# Kept when they exist; merged again with --force.
before=$(stat -c %Y.%i step-two/model.safetensors)
message=$("$revmerge" merge --config mega.yml 2>&1)
grep -q "kept .*step-one .*document 2 of 2.*: it exists; --force merges it again" <<<"$message" || { echo "FAIL: $message"; exit 1; }
[ "$(stat -c %Y.%i step-two/model.safetensors)" = "$before" ] || { echo "FAIL: an existing output was rewritten"; exit 1; }
"$revmerge" merge --config mega.yml --force -q
[ "$(stat -c %i step-two/model.safetensors)" != "${before#*.}" ] || { echo "FAIL: --force did not merge again"; exit 1; }
cmp step-two/model.safetensors by-hand-two/model.safetensors
echo "mega: existing outputs kept, --force merges them again"
# Two documents reading each other's output: refused, nothing written.
sed 's#model: $g/ft1#model: step-two#' mega.yml | sed "s#model: $g/ft1#model: step-two#" > cycle.yml
rm -rf step-one step-two
if "$revmerge" merge --config cycle.yml -q 2>err.txt; then echo "FAIL: a cycle was merged"; exit 1; fi
grep -q "the merges form a cycle" err.txt || { cat err.txt; exit 1; }
[ ! -e step-one ] && [ ! -e step-two ] || { echo "FAIL: written before the cycle was refused"; exit 1; }
echo "mega: a cycle refused before anything is written"
