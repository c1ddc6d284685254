#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each for SECONDS on its committed
# seed corpus (new inputs go to a scratch copy). Prints, per target, the executions, the
# coverage reached and the outcome; exits non-zero on any crash, leak or timeout.
#
#   tools/fuzz.sh [SECONDS=20] [TARGET...]     (CI runs a short smoke; docs/fuzzing.md the long runs)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors_header shard_index adapter_config bundle_manifest merge_config)
build=build/fuzz
mkdir -p "$build"
# Quiet when it builds; the build's own messages when it does not (a silent exit hid a link error).
if ! { CXX=clang++ cmake -S tests/fuzz -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
       cmake --build "$build" -j "$(nproc)"; } >"$build/build.log" 2>&1; then
  tail -n 40 "$build/build.log" >&2
  echo "tools/fuzz.sh: the fuzz targets did not build (log: $build/build.log)" >&2
  exit 1
fi
status=0
printf '%-20s %12s %8s %8s  %s\n' target executions cov ft outcome
for t in "${targets[@]}"; do
  work=$build/work/$t
  rm -rf "$work" && mkdir -p "$work"
  cp tests/fuzz/corpus/$t/* "$work/"
  log=$build/$t.log
  if "$build/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
       -print_final_stats=1 -artifact_prefix="$build/$t-" "$work" >"$log" 2>&1; then
    outcome=clean
  else
    outcome="FAILED (see $log)"
    status=1
  fi
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || echo "?")
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || echo "?")
  printf '%-20s %12s %8s %8s  %s\n' "$t" "$execs" "$cov" "$ft" "$outcome"
done
exit $status
