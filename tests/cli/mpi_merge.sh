#!/usr/bin/env bash
# `mpirun -n N revmerge merge`: the example adapters merged by 2 and 3 ranks (RMM; also a shard per
# rank, reverted) and stored by 2 (--method auto), full fine-tunes (RMM, TIES, compress) and
# adapters merged by DARE-TIES give the single process's bytes; a truncated input fails every rank
# with the file named and leaves nothing, as does a signal; what does not split across ranks is
# refused by name.
# Usage: mpi_merge.sh REVMERGE MPIEXEC SOURCE_DIR WORK_DIR MAKE_ADAPTERS
set -euo pipefail
revmerge=$1 mpiexec=$2 src=$3 work=$4 make_adapters=$5
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*"; exit 1; }
# Open MPI refuses root without the first two, and more ranks than cores without the third
# (other MPIs ignore them).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# A launcher that hangs (a container without what MPI expects) fails the test instead of CI.
ranks() { local n=$1; shift; timeout --kill-after=10 120 "$mpiexec" -n "$n" "$@"; }
adapters=("$src"/examples/adapters/*)

"$revmerge" merge --basis 2 --threads 1 --device cpu -q --out "$work/one" "${adapters[@]}"
for n in 1 2 3; do
  ranks "$n" "$revmerge" merge --basis 2 --threads 1 --device cpu --out "$work/n$n" "${adapters[@]}" \
    >"$work/n$n.txt" 2>"$work/n$n.err" || { cat "$work/n$n.err"; fail "$n ranks: the merge failed"; }
  for f in bundle.safetensors manifest.json; do
    cmp -s "$work/one/$f" "$work/n$n/$f" || fail "$n ranks: $f differs from the single process's"
  done
  # Rank 0 reports for all, once.
  [ "$(grep -c "RMM bundle" "$work/n$n.txt")" = 1 ] || { cat "$work/n$n.txt"; fail "$n ranks: not one report"; }
done

# --shard-per-rank: a shard per rank and the index; reverting a task gives the one file's adapter.
ranks 3 "$revmerge" merge --basis 2 --threads 1 --device cpu -q --shard-per-rank --out "$work/s3" "${adapters[@]}" ||
  fail "--shard-per-rank under 3 ranks failed"
[ ! -e "$work/s3/bundle.safetensors" ] && [ -e "$work/s3/bundle.safetensors.index.json" ] ||
  fail "--shard-per-rank: no index, or the one file"
[ "$(ls "$work/s3"/bundle-0000?-of-00003.safetensors | wc -l)" = 3 ] || { ls "$work/s3"; fail "--shard-per-rank: not 3 shards"; }
cmp -s "$work/one/manifest.json" "$work/s3/manifest.json" || fail "--shard-per-rank: the manifest differs"
task=$(basename "${adapters[0]}")
"$revmerge" revert --task "$task" --device cpu -q --out "$work/s3-$task" "$work/s3" || fail "revert of a sharded bundle failed"
"$revmerge" revert --task "$task" --device cpu -q --out "$work/one-$task" "$work/one"
cmp -s "$work/one-$task/adapter_model.safetensors" "$work/s3-$task/adapter_model.safetensors" ||
  fail "the sharded bundle's $task differs from the one file's"
# The independent numpy reader takes the shards too (where numpy and safetensors are installed).
if python3 -c 'import numpy, safetensors' 2>/dev/null; then
  python3 "$src/tools/rmm_numpy.py" "$work/s3" >"$work/s3-numpy.txt" 2>&1 || { cat "$work/s3-numpy.txt"; fail "rmm_numpy.py on the shards"; }
fi

# The budgeted store: measured by shares, one allocation everywhere, stored by shares.
"$revmerge" merge --method auto --storage 0.4 --threads 1 --device cpu -q --out "$work/auto1" "${adapters[@]}"
ranks 2 "$revmerge" merge --method auto --storage 0.4 --threads 1 --device cpu -q --out "$work/auto2" "${adapters[@]}" ||
  fail "--method auto under 2 ranks failed"
for f in bundle.safetensors manifest.json; do
  cmp -s "$work/auto1/$f" "$work/auto2/$f" || fail "--method auto, 2 ranks: $f differs from the single process's"
done

# RMM over full fine-tunes: each rank compresses and merges its own modules.
mk=$src/tests/fixtures/golden/mergekit
"$revmerge" merge --basis 1 --base "$mk/base" --rank 4 --threads 1 --device cpu -q --out "$work/full1" "$mk/ft0" "$mk/ft1" 2>/dev/null
ranks 2 "$revmerge" merge --basis 1 --base "$mk/base" --rank 4 --threads 1 --device cpu -q --out "$work/full2" \
  "$mk/ft0" "$mk/ft1" 2>/dev/null || fail "RMM over full fine-tunes under 2 ranks failed"
for f in bundle.safetensors manifest.json; do
  cmp -s "$work/full1/$f" "$work/full2/$f" || fail "full fine-tunes, 2 ranks: $f differs from the single process's"
done

# compress: each rank its share of the modules into the one adapter; the report is one process's.
"$revmerge" compress --base "$mk/base" --model "$mk/ft0" --rank 4 --threads 1 --device cpu --json --out "$work/k1" >"$work/k1.json"
ranks 3 "$revmerge" compress --base "$mk/base" --model "$mk/ft0" --rank 4 --threads 1 --device cpu --json \
  --out "$work/k3" >"$work/k3.json" || fail "compress under 3 ranks failed"
for f in adapter_model.safetensors adapter_config.json; do
  cmp -s "$work/k1/$f" "$work/k3/$f" || fail "compress, 3 ranks: $f differs from the single process's"
done
[ "$(sed 's/k1/kN/' "$work/k1.json")" = "$(sed 's/k3/kN/' "$work/k3.json")" ] || fail "compress, 3 ranks: the report differs"
# Ranks chosen by energy: known after each SVD, the adapter laid out once every rank's are.
"$revmerge" compress --base "$mk/base" --model "$mk/ft0" --rank 8 --energy 0.7 --threads 1 --device cpu -q --out "$work/e1"
ranks 3 "$revmerge" compress --base "$mk/base" --model "$mk/ft0" --rank 8 --energy 0.7 --threads 1 --device cpu -q \
  --out "$work/e3" || fail "compress --energy under 3 ranks failed"
for f in adapter_model.safetensors adapter_config.json; do
  cmp -s "$work/e1/$f" "$work/e3/$f" || fail "compress --energy, 3 ranks: $f differs from the single process's"
done

# The budgeted store of full fine-tunes: each compressed across the ranks, then stored across them.
"$revmerge" merge --method auto --storage 0.5 --base "$mk/base" --rank 4 --threads 1 --device cpu -q \
  --out "$work/store1" "$mk/ft0" "$mk/ft1" "$mk/ft2"
ranks 3 "$revmerge" merge --method auto --storage 0.5 --base "$mk/base" --rank 4 --threads 1 --device cpu -q \
  --out "$work/store3" "$mk/ft0" "$mk/ft1" "$mk/ft2" || fail "the store of full fine-tunes under 3 ranks failed"
for f in bundle.safetensors manifest.json; do
  cmp -s "$work/store1/$f" "$work/store3/$f" || fail "store of full fine-tunes, 3 ranks: $f differs"
done
if compgen -G "$work/store3.compressing*" >/dev/null; then fail "the compressed adapters were left behind"; fi

# A truncated input: every rank fails, the file is named, no bundle and no temporary folder.
cp -r "$src/examples/adapters" "$work/inputs"
truncate -s -4096 "$work/inputs/topic/adapter_model.safetensors"
if ranks 3 "$revmerge" merge --basis 2 --threads 1 --device cpu --out "$work/bad" "$work"/inputs/* \
     >"$work/bad.txt" 2>&1; then
  fail "a truncated input was merged"
fi
grep -q "topic/adapter_model.safetensors" "$work/bad.txt" || { cat "$work/bad.txt"; fail "the file is not named"; }
[ ! -e "$work/bad" ] || fail "a bundle was left behind"
if compgen -G "$work/.bad.*" >/dev/null; then fail "a temporary output was left behind"; fi

# A signal mid-merge: SIGTERM to every rank (what a scheduler sends, and what Open MPI's mpirun
# sends on Ctrl-C once its odls_base_sigkill_timeout has passed — docs/scaling.md): every rank
# stops, nothing written, no temporaries. The ranks are signalled directly because mpirun's own
# sequence is timed (SIGTERM after 1 s, SIGKILL 1 s later): on a loaded 2-core machine a rank
# can miss that second, which says nothing of revmerge. The set is large enough (8 layers of 7b
# shapes, ~3 s) for the signal to arrive while the ranks write.
"$make_adapters" --model llama-7b --tasks 8 --rank 64 --layers 8 --out "$work/big" >/dev/null
"$mpiexec" -n 2 "$revmerge" merge --basis 2 --threads 1 --device cpu -q --out "$work/sig" "$work"/big/task-* \
  >"$work/sig.txt" 2>&1 &
launcher=$!
for _ in $(seq 3000); do  # until the ranks have staged the output (at most 60 s)
  if compgen -G "$work/.sig.revmerge-tmp*" >/dev/null; then break; fi
  kill -0 "$launcher" 2>/dev/null || { cat "$work/sig.txt"; fail "the merge ended before it was interrupted"; }
  sleep 0.02
done
rank_pids=$(pgrep -P "$launcher" -x revmerge) || fail "no ranks found under the launcher"
[ "$(echo "$rank_pids" | wc -l)" = 2 ] || fail "not 2 ranks under the launcher: $rank_pids"
kill -TERM $rank_pids
if wait "$launcher"; then fail "an interrupted merge exited 0"; fi
grep -q "interrupted by SIGTERM; nothing was written" "$work/sig.txt" || { cat "$work/sig.txt"; fail "no interrupt message"; }
[ ! -e "$work/sig" ] || fail "an interrupted merge left its output"
if compgen -G "$work/.sig.*" >/dev/null; then fail "an interrupted merge left a temporary output"; fi
rm -rf "$work/big"

# The classic methods on full models: each rank merges its share of the tensors into the shards.
"$revmerge" merge --config "$mk/ties.yml" --threads 1 -q --out "$work/ties1"
ranks 3 "$revmerge" merge --config "$mk/ties.yml" --threads 1 -q --out "$work/ties3" || fail "TIES under 3 ranks failed"
for f in model.safetensors config.json; do
  cmp -s "$work/ties1/$f" "$work/ties3/$f" || fail "TIES, 3 ranks: $f differs from the single process's"
done
# --shard-per-rank on a model: each rank's tensors in a shard of their own, listed by the index.
ranks 3 "$revmerge" merge --config "$mk/ties.yml" --threads 1 -q --shard-per-rank --out "$work/ties3s" ||
  fail "TIES --shard-per-rank under 3 ranks failed"
[ "$(ls "$work/ties3s"/model-0000?-of-00003.safetensors | wc -l)" = 3 ] && [ -e "$work/ties3s/model.safetensors.index.json" ] ||
  { ls "$work/ties3s"; fail "TIES --shard-per-rank: not 3 shards and the index"; }
# Layer slices (stacked and merged layers): split by the output's tensors like any model.
for cfg in ties_slices passthrough_stack; do
  "$revmerge" merge --config "$mk/$cfg.yml" --threads 1 -q --out "$work/${cfg}1"
  ranks 3 "$revmerge" merge --config "$mk/$cfg.yml" --threads 1 -q --out "$work/${cfg}3" || fail "$cfg under 3 ranks failed"
  for f in "$work/${cfg}1"/*; do
    [ "$(basename "$f")" = revmerge_recipe.json ] && continue
    cmp -s "$f" "$work/${cfg}3/$(basename "$f")" || fail "$cfg, 3 ranks: $(basename "$f") differs from the single process's"
  done
done
# On adapters: each rank merges its share of the modules, rank 0 writes the adapter.
"$revmerge" merge --method dare_ties --density 0.5 --threads 1 -q --out "$work/dt1" "${adapters[@]}"
ranks 2 "$revmerge" merge --method dare_ties --density 0.5 --threads 1 -q --out "$work/dt2" "${adapters[@]}" ||
  fail "--method dare_ties of adapters under 2 ranks failed"
for f in adapter_model.safetensors adapter_config.json; do
  cmp -s "$work/dt1/$f" "$work/dt2/$f" || fail "dare_ties of adapters, 2 ranks: $f differs from the single process's"
done
if ranks 2 "$revmerge" info "${adapters[0]}" >"$work/info.txt" 2>&1; then fail "info ran under 2 ranks"; fi
grep -q "revmerge info runs in one process" "$work/info.txt" || { cat "$work/info.txt"; fail "info message"; }
echo "mpi merges: OK"
