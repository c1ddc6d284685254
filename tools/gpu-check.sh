#!/usr/bin/env bash
# The whole GPU check in one command, from a fresh checkout on a machine with an NVIDIA GPU:
# configure and build for sm_90, run the CUDA tests, compare GPU against CPU on a 7B-shaped
# synthetic adapter set, compress and merge 7B-shaped full fine-tunes on the GPU beside the CPU,
# run compute-sanitizer memcheck over the CUDA tests, run the benchmarks, keep every log in
# OUTDIR, and print a short table last.
#
#   tools/gpu-check.sh OUTDIR
#
# Order: what this round's GPU work needs first (the CUDA tests, GPU = CPU bitwise, per-layer
# compute, the 7b set end to end against its floor), then the 70b shape, PT-SVD and full
# fine-tunes, the classic merges, the budgeted store, resident bundles, mergekit-extract-lora,
# a whole 7b fine-tune compressed (26 GB written: leave it out of a first call), racecheck, the
# Python package, the whole suite and memcheck.
#
# With build/carry/ from tools/gpu-pack.sh (binaries built on a machine without a GPU, their
# libraries, mergekit), the check skips configure and build when those binaries start here.
# What a lent machine's caller takes back: OUTDIR's *.log *.json *.txt and the profile steps'
# *.csv (each SASS instruction's stalls); the .ncu-rep reports are large and stay there.
#
# GPU_CHECK_DEADLINE (seconds, default 540): steps that would start later are reported NOT RUN,
# so the summary and the logs still come back from a lease with a hard time limit. Each step
# has its own timeout too; the most telling steps run first, the whole suite and memcheck last.
# GPU_CHECK_SKIP="all-tests memcheck" (step names, space-separated) leaves steps out;
# GPU_CHECK_ONLY="racecheck memcheck" runs only those (a second, short call of a lease).
# GPU_CHECK_DEVICE=cpu rehearses the check where no GPU is: every step runs with the CPU standing
# in for the GPU (outputs still named -cuda, so each comparison is the CPU against itself), the
# steps that need several GPUs are reported NOT RUN. It catches a step that would fail for
# reasons of its own (a path, an option, a script) before a lease's minutes are spent on it.
#
# Debian libraries the build needs come from the system when present, else from .vendor/
# (made by tools/vendor-debs.sh on a machine with apt, carried along with the checkout).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: tools/gpu-check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=build/gpu-check
jobs=$(nproc)
declare -A result
order=()  # the steps in the order they came, for the table
t_start=$(date +%s)
device=${GPU_CHECK_DEVICE:-cuda}  # the device the GPU steps run on
case $device in cuda | cpu) ;; *) echo "GPU_CHECK_DEVICE: cuda or cpu, not '$device'"; exit 2 ;; esac

deadline=${GPU_CHECK_DEADLINE:-540}
# No step runs past GPU_CHECK_HARD_END (seconds from the start): each step's own timeout is cut
# to what is left, so the table and the logs come back before the lease's command limit.
hard_end=${GPU_CHECK_HARD_END:-$(( deadline + 60 ))}

not_run() {  # not_run NAME REASON: a step left out, in the table with its reason
  order+=("$1")
  result[$1]="NOT RUN ($2)"
}

step() {  # step NAME LOGFILE TIMEOUT_S CMD... : runs, logs, records PASS/FAIL
  local name=$1 log=$out/$2 limit=$3; shift 3
  local t0=$(date +%s)
  (( t0 - t_start > deadline )) && { not_run "$name" "past the ${deadline}s deadline"; return; }
  [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]] && { not_run "$name" GPU_CHECK_SKIP; return; }
  [ -n "${GPU_CHECK_ONLY:-}" ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]] && { not_run "$name" GPU_CHECK_ONLY; return; }
  [ "$device" = cpu ] && limit=$(( limit * 4 ))  # a rehearsal's CPU stand-in is slower
  local left=$(( hard_end - (t0 - t_start) ))
  (( left < 15 )) && { not_run "$name" "${left}s left before the ${hard_end}s hard end"; return; }
  (( limit > left )) && limit=$left
  order+=("$name")
  echo "== $name (at $(( t0 - t_start ))s)" | tee -a "$out/summary.log"
  if timeout "$limit" "$@" >"$log" 2>&1; then result[$name]="PASS ($(( $(date +%s) - t0 ))s)"
  else result[$name]="FAIL ($(( $(date +%s) - t0 ))s, see $(basename "$log"))"; fi
  tail -n 3 "$log" | sed 's/^/   /'
}

# Binaries built and packed on a machine without a GPU (tools/gpu-pack.sh, build/carry/): used
# when they start here, so the lease's minutes go to measuring; otherwise the check builds.
prebuilt=""
if [ -f build/carry/prebuilt.tar.xz ] && [ -z "${GPU_CHECK_BUILD:-}" ]; then
  tar -xJf build/carry/prebuilt.tar.xz
  built_at=$(cat "$build/BUILD_ROOT")
  # RUNPATH and CTest's files name the checkout the binaries were built in: make it this one.
  if [ "$built_at" != "$PWD" ] && [ ! -e "$built_at" ]; then
    mkdir -p "$(dirname "$built_at")" && ln -s "$PWD" "$built_at"
  fi
  # $build/host: the Python package, built apart for this machine's Python (tools/gpu-pack.sh),
  # loads this build's librevmerge (the same sources) from there.
  export LD_LIBRARY_PATH="$PWD/build/gpu-rtlib:$PWD/$build/host:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if ldd "$build/host/cli/revmerge" | grep -qE 'lib(cublas|cusolver).*not found'; then
    for d in $(find /usr/local /opt /usr/lib -name 'libcublas.so.13' -o -name 'libcusolver.so.12' 2>/dev/null | xargs -r -n1 dirname | sort -u); do
      LD_LIBRARY_PATH+=":$d"
    done
  fi
  # The CLI tests' Python and CMake (cmake -P scripts), where they were on the building machine.
  for tool in python3:BUILD_PYTHON cmake:BUILD_CMAKE; do
    at=$(cat "$build/${tool#*:}" 2>/dev/null || true)
    if [ -n "$at" ] && [ ! -e "$at" ] && command -v "${tool%%:*}" >/dev/null; then
      mkdir -p "$(dirname "$at")" && ln -s "$(command -v "${tool%%:*}")" "$at"
    fi
  done
  if "$build/host/cli/revmerge" --version >/dev/null 2>&1 && "$build/tests/revmerge_tests" --gtest_list_tests >/dev/null 2>&1; then
    prebuilt=$(cat "$build/BUILD_COMMIT")
    echo "using the carried binaries (built at $prebuilt)" | tee -a "$out/summary.log"
  else
    { echo "the carried binaries do not start here; building"; ldd "$build/host/cli/revmerge" | grep 'not found'; } | tee -a "$out/summary.log"
  fi
fi
[ -z "$prebuilt" ] && [ ! -d .vendor ] && [ -f build/carry/vendor.tar.xz ] && tar -xJf build/carry/vendor.tar.xz

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1 || true
cmake_args=(-S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DREVMERGE_CUDA=ON
            -DCMAKE_CUDA_ARCHITECTURES=90)
# Any one missing piece (a machine may have LAPACKE but not OpenBLAS's OpenMP build) sends the
# whole build to .vendor/, so the libraries come from one distribution.
if ! [ -f /usr/include/lapacke.h ] || ! [ -d /usr/share/cmake/CLI11 ] ||
   ! [ -f /usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h ] ||
   ! [ -d /usr/lib/x86_64-linux-gnu/cmake/yaml-cpp ]; then
  if [ -f .vendor/vendor.cmake ]; then
    cmake_args+=(-C .vendor/vendor.cmake)
    export LD_LIBRARY_PATH="$(tools/vendor-debs.sh --libpath)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "using the unpacked Debian packages in .vendor/" | tee -a "$out/summary.log"
  else
    echo "missing build dependencies and no .vendor/ (run tools/vendor-debs.sh where apt works)" | tee -a "$out/summary.log"
  fi
fi
command -v ninja >/dev/null || cmake_args[3]="Unix Makefiles"

revmerge=$build/host/cli/revmerge
if [ -n "$prebuilt" ]; then
  not_run configure "binaries carried, built at $prebuilt"
  not_run build "binaries carried, built at $prebuilt"
else
  # A cache from another machine's libraries must not be reused; removed inside the step, so a
  # call that leaves configure out (GPU_CHECK_ONLY, GPU_CHECK_SKIP) keeps the build it has.
  step configure configure.log 120 bash -c 'rm -f "$0/CMakeCache.txt" && cmake "$@"' "$build" "${cmake_args[@]}"
  step build build.log 360 cmake --build "$build" -j "$jobs"
fi
bench=$build/bench/revmerge_bench_rmm
step devices devices.log 30 "$revmerge" devices
# A GPU check whose GPU cases all skipped would pass without testing anything: here they fail.
[ "$device" = cuda ] && export REVMERGE_REQUIRE_GPU=1
step cuda-tests cuda-tests.log 240 ctest --test-dir "$build" -L gpu --output-on-failure -j 4 --timeout 180
# One llama-7b layer's RMM compute on the GPU and the CPU: the stored tensors byte for byte, the
# error terms to rounding, the per-layer time (the issue's target: ≤ 3 ms).
step gpu-vs-cpu-7b gpu-vs-cpu-7b.log 120 "$bench" --model llama-7b --tasks 8 --rank 64 --basis 4 --layers 1 --device "$([ "$device" = cuda ] && echo both || echo cpu)"
# trace NAME LOG LIMIT CMD…: CMD's kernels, each one's count and time — nsys's timeline where it
# is installed, else Nsight Compute's per-kernel summary (one metric, no replay; the clocks left
# as they are: --clock-control none), else not run.
ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
trace() {
  local name=$1 log=$2 limit=$3
  shift 3
  if command -v nsys >/dev/null; then
    step "$name" "$log" "$limit" nsys profile --force-overwrite true -o "$out/$name" --stats=true "$@"
  elif [ -n "$ncu_bin" ] && [ "$device" = cuda ]; then
    step "$name" "$log" "$limit" "$ncu_bin" --clock-control none --metrics gpu__time_duration.sum \
      --print-summary per-kernel "$@"
  else
    not_run "$name" "neither nsys nor ncu found, or rehearsed on the CPU"
  fi
}
# What a layer's kernels do, for the next round of tuning.
trace trace-7b-layer trace-7b-layer.log 90 "$bench" --model llama-7b --tasks 8 --rank 64 --basis 4 --layers 2 --device "$device"
step bench-7b-gpu bench-7b-gpu.log 60 "$bench" --model llama-7b --tasks 8 --rank 64 --basis 4 --layers 8 --device "$device"
# The position routine's team width (issue 18): teams of 8, 16 and 32 lanes a position
# (REVMERGE_RMM_TEAM_LANES; 32 is the default), each first against the CPU's bytes on one layer
# (exit 1 where they differ), then timed over the same 8 layers as bench-7b-gpu.
rmm_team_lanes() {
  local lanes both
  for lanes in 8 16 32; do
    echo "== teams of $lanes lanes"
    both=$(REVMERGE_RMM_TEAM_LANES=$lanes "$bench" --model llama-7b --tasks 8 --rank 64 --basis 4 --layers 1 \
      --device both 2>&1) || { echo "$both" | tail -n 5; return 1; }
    echo "$both" | grep -E "GPU vs CPU"
    REVMERGE_RMM_TEAM_LANES=$lanes "$bench" --model llama-7b --tasks 8 --rank 64 --basis 4 --layers 8 --device "$device" || return 1
  done
  # What bounds teams of 8 (issue slots, occupancy, or the warps' stalls), beside profile-rmm-position's
  # full profile of the warp's: Nsight Compute's sections for the first module's launch.
  if [ -n "$ncu_bin" ]; then
    echo "== teams of 8 lanes, Nsight Compute"
    REVMERGE_RMM_TEAM_LANES=8 "$ncu_bin" --clock-control none --kernel-name regex:rmm_by_teams --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section SchedulerStats --section WarpStateStats \
      "$bench" --model llama-7b --tasks 8 --rank 64 --basis 4 --layers 1 --device "$device" || return 1
  fi
}
export -f rmm_team_lanes
export bench device ncu_bin
if [ "$device" = cuda ]; then
  step rmm-team-lanes rmm-team-lanes.log 120 bash -c rmm_team_lanes
else
  not_run rmm-team-lanes "rehearsed on the CPU: the CPU runs a position on one lane"
fi
step bench-70b-gpu bench-70b-gpu.log 60 "$bench" --model llama-70b --tasks 8 --rank 64 --basis 4 --layers 2 --device "$device"
# The streamed pipeline on the GPU, all 32 layers of the 7b shape (2.6 GB of bf16 adapters):
# end to end against the read floor measured in the same run (target ≤ 1.5×), the pipelined
# bundle bitwise the one-module-at-a-time one, then three JSON runs for medians.
step make-adapters make-adapters.log 150 "$build/bench/revmerge_make_adapters" --model llama-7b --tasks 8 --rank 64 --out "$out/adapters-7b" --force
step pipeline-7b-gpu pipeline-7b-gpu.log 150 "$revmerge" bench --device "$device" --basis 4 --compare-sequential "$out"/adapters-7b/task-*
repeat_bench() {  # repeat_bench NAME ADAPTER...: three JSON runs on the GPU, then their medians
  local name=$1; shift
  for i in 1 2 3; do "$revmerge" bench --device "$device" --basis 4 --json "$@" >"$out/$name-$i.json" || return 1; done
  command -v python3 >/dev/null || { echo "no python3: medians not computed, see the JSON files"; return 0; }
  python3 - "$out"/"$name"-?.json <<'PY'
import json, statistics, sys
runs = [json.load(open(f)) for f in sys.argv[1:]]
def med(f): return statistics.median(f(r) for r in runs)
print("median of %d: end to end %.3f s, pipeline %.3f s, setup %.3f s, finish %.3f s, "
      "read floor %.3f s, end to end / floor %.2f, write floor %.3f s, end to end / larger floor %.2f, "
      "slowest stage %.3f s, end to end/slowest %.2f" % (
      len(runs), med(lambda r: r["pipeline"]["seconds"]), med(lambda r: r["pipeline"]["pipeline_seconds"]),
      med(lambda r: r["pipeline"]["setup_seconds"]), med(lambda r: r["pipeline"]["finish_seconds"]),
      med(lambda r: r["floor"]["seconds"]), med(lambda r: r["end_to_end_over_floor"]),
      med(lambda r: r["write_floor"]["seconds"]), med(lambda r: r["end_to_end_over_larger_floor"]),
      med(lambda r: r["slowest_stage_seconds"]), med(lambda r: r["end_to_end_over_slowest_stage"])))
for k in ("read", "upload", "compute", "write"):
    print("  %-8s busy %.3f s, waiting %.3f s (medians)" % (k, med(lambda r: r["pipeline"]["stage_seconds"][k]),
          med(lambda r: r["pipeline"]["stage_wait_seconds"][k])))
PY
}
export -f repeat_bench
export revmerge out build device
step pipeline-7b-gpu-x3 pipeline-7b-gpu-x3.log 150 bash -c 'repeat_bench pipeline-7b-gpu "$out"/adapters-7b/task-*'
# The same bundle made on the GPU and on the CPU: byte for byte (the tensors; the manifest's
# error figures agree to rounding).
bitwise_bundle() {
  "$revmerge" merge --device "$device" --basis 4 --force --quiet --out "$out/bundle-7b-cuda" "$out"/adapters-7b/task-* || return 1
  "$revmerge" merge --device cpu --basis 4 --force --quiet --out "$out/bundle-7b-cpu" "$out"/adapters-7b/task-* || return 1
  cmp "$out/bundle-7b-cuda/bundle.safetensors" "$out/bundle-7b-cpu/bundle.safetensors" &&
    echo "7b bundle: GPU and CPU tensors bitwise identical"
}
export -f bitwise_bundle
step bitwise-7b bitwise-7b.log 150 bash -c bitwise_bundle
# Two workers on the one GPU (--gpus 0,0: the multi-GPU path on a one-GPU machine) against one:
# the same bytes, and the time of each.
two_workers() {
  local t0 t1 t2
  t0=$(date +%s.%N)
  "$revmerge" merge --device cuda --gpu 0 --threads 4 --basis 4 --force --quiet --out "$out/bundle-7b-gpu0" "$out"/adapters-7b/task-* || return 1
  t1=$(date +%s.%N)
  "$revmerge" merge --gpus 0,0 --threads 4 --basis 4 --force --quiet --out "$out/bundle-7b-gpus00" "$out"/adapters-7b/task-* || return 1
  t2=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "one worker: %.2f s; --gpus 0,0: %.2f s\n", b - a, c - b }'
  cmp "$out/bundle-7b-gpu0/bundle.safetensors" "$out/bundle-7b-gpus00/bundle.safetensors" &&
    cmp "$out/bundle-7b-gpu0/manifest.json" "$out/bundle-7b-gpus00/manifest.json" &&
    echo "--gpus 0,0: the one worker's bundle byte for byte"
}
export -f two_workers
several_gpus() {  # several_gpus NAME LOG LIMIT CMD…: a step of --gpus workers, not rehearsed on the CPU
  if [ "$device" = cuda ]; then step "$@"; else not_run "$1" "--gpus: no CPU stand-in"; fi
}
several_gpus gpus-0-0 gpus-0-0.log 120 bash -c two_workers
# The budgeted store on two workers of the one GPU, one with a shard of its own: the one GPU's
# manifest, and the same tensors as reverting shows (a task reverted from each, compared).
store_two_workers() {
  "$revmerge" merge --device cuda --method auto --representations rmm --storage 0.3 --gpu 0 --threads 4 --force --quiet --out "$out/store-7b-gpu0" "$out"/adapters-7b/task-* || return 1
  "$revmerge" merge --method auto --representations rmm --storage 0.3 --gpus 0,0 --threads 4 --shard-per-rank --force --quiet \
    --out "$out/store-7b-gpus00" "$out"/adapters-7b/task-* || return 1
  cmp "$out/store-7b-gpu0/manifest.json" "$out/store-7b-gpus00/manifest.json" || return 1
  "$revmerge" revert --task task-3 --device "$device" --force --quiet --out "$out/store-7b-gpu0-t3" "$out/store-7b-gpu0" || return 1
  "$revmerge" revert --task task-3 --device "$device" --force --quiet --out "$out/store-7b-gpus00-t3" "$out/store-7b-gpus00" || return 1
  cmp "$out/store-7b-gpu0-t3/adapter_model.safetensors" "$out/store-7b-gpus00-t3/adapter_model.safetensors" &&
    echo "--method auto --gpus 0,0 --shard-per-rank: the one worker's manifest and task-3"
}
export -f store_two_workers
several_gpus store-gpus-0-0 store-gpus-0-0.log 150 bash -c store_two_workers
# The whole 80-layer 70b shape (14.5 GB of bf16 adapters; written here, where the disk has room).
step make-adapters-70b make-adapters-70b.log 240 "$build/bench/revmerge_make_adapters" --model llama-70b --tasks 8 --rank 64 --out "$out/adapters-70b" --force
step pipeline-70b-gpu pipeline-70b-gpu.log 240 bash -c 'repeat_bench pipeline-70b-gpu "$out"/adapters-70b/task-*'
# PT-SVD alone: a 7b layer's 8 fine-tunes from BF16 bytes in memory, the batched engine on the
# GPU against the CPU's pt_svd (singular values compared), beside the upload floor.
step pt-svd-7b pt-svd-7b.log 180 "$build/bench/revmerge_bench_pt_svd" --model llama-7b --tasks 8 --rank 64 --device "$device"
# Full fine-tunes: one 7b layer, base and 8 fine-tunes in bf16; compress one on the GPU and on
# the CPU, then the streamed RMM merge of all 8 on each.
step make-models make-models.log 120 "$build/bench/revmerge_make_models" --model llama-7b --tasks 8 --layers 1 --out "$out/models-7b" --force
full_models() {
  local m=$out/models-7b dev t0 ms
  for dev in cuda cpu; do
    t0=$(date +%s%N)
    "$revmerge" compress --device "${dev/cuda/$device}" --base "$m/base" --model "$m/ft-0" --rank 64 --force --json \
      --out "$out/compress-$dev" >"$out/compress-7b-$dev.json" || return 1
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "compress 7b layer on $dev: $ms ms file to file, $(grep -m1 '"relative_error"' "$out/compress-7b-$dev.json" | tr -d ' ,')"
  done
  for dev in cuda cpu; do
    t0=$(date +%s%N)
    "$revmerge" merge --device "${dev/cuda/$device}" --basis 4 --base "$m/base" --rank 64 --force --quiet \
      --out "$out/full-merge-$dev" "$m"/ft-? || return 1
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "full merge 7b layer, 8 fine-tunes, rank 64, P = 4 on $dev: $ms ms file to file"
  done
  "$revmerge" info "$out/full-merge-cuda" | sed -n "2p;6,8p"  # the device and tasks' delta errors
  "$revmerge" info "$out/full-merge-cpu" | sed -n "2p;6,8p"
}
export -f full_models
step full-models full-models.log 240 bash -c full_models
# The element-wise full-model merges on the GPU (issue 22): TIES, DARE-TIES, task arithmetic,
# model_stock, SLERP, multislerp, nuslerp, DELLA, ramplus_tl, SCE, karcher and arcee_fusion of the 7b layer's bf16 fine-tunes, and three layer-slice
# configs on the tiny golden models, on --device cuda and cpu, timed file to file; the two outputs
# must be byte-identical (the same kernels/elementwise*.hpp steps on both).
# One merge on cuda and on cpu from the 7b models, timed file to file, the outputs compared byte
# for byte: both_devices NAME MERGE-ARGS… (the models last).
both_devices() {
  local name=$1 dev t0
  shift
  for dev in cuda cpu; do
    t0=$(date +%s%N)
    "$revmerge" merge --device "${dev/cuda/$device}" --base "$out/models-7b/base" --force --quiet --out "$out/classic-$name-$dev" "$@" ||
      return 1
    echo "$name on $dev: $(( ($(date +%s%N) - t0) / 1000000 )) ms file to file"
  done
  cmp "$out/classic-$name-cuda/model.safetensors" "$out/classic-$name-cpu/model.safetensors" &&
    echo "$name: GPU and CPU outputs byte-identical"
}
classic_gpu() {
  local m=$out/models-7b
  both_devices ties --method ties --density 0.3 "$m/ft-0" "$m/ft-1" "$m/ft-2" || return 1
  both_devices dare_ties --method dare_ties --density 0.3 "$m/ft-0" "$m/ft-1" "$m/ft-2" || return 1
  both_devices task_arithmetic --method task_arithmetic "$m/ft-0" "$m/ft-1" "$m/ft-2" || return 1
  both_devices model_stock --method model_stock "$m/ft-0" "$m/ft-1" "$m/ft-2" || return 1
  both_devices slerp --method slerp --t 0.4 "$m/ft-0" || return 1
  both_devices multislerp --method multislerp "$m/ft-0" "$m/ft-1" "$m/ft-2" || return 1
  both_devices nuslerp --method nuslerp --weights 0.3,0.7 "$m/ft-0" "$m/ft-1" || return 1
  # DELLA ranks each row on the GPU by a segmented sort (cuda/cuda_della.cu; counting took 5.4 s
  # against the CPU's 1.7 s on the H200 before it).
  both_devices della --method della --density 0.3 --epsilon 0.1 "$m/ft-0" "$m/ft-1" "$m/ft-2" || return 1
  both_devices ramplus_tl --method ramplus_tl --epsilon 1e-3 "$m/ft-0" "$m/ft-1" "$m/ft-2" || return 1
  both_devices sce --method sce --select-topk 0.3 "$m/ft-0" "$m/ft-1" "$m/ft-2" || return 1
  both_devices karcher --method karcher "$m/ft-0" "$m/ft-1" "$m/ft-2" || return 1
  # arcee_fusion: a thread per row for the softmaxes' divergence (kernels/exp_log.hpp's exp and
  # log), four histogram passes for the quartiles.
  both_devices arcee_fusion --method arcee_fusion "$m/ft-0" || return 1
  # mergekit's layer slices (the golden configs on the committed tiny models), every slice's
  # blocks merged on the GPU: byte-identical to the CPU's.
  local c dev
  for c in ties_slices slerp_slices passthrough_stack; do
    for dev in cuda cpu; do
      "$revmerge" merge --device "${dev/cuda/$device}" --config "tests/fixtures/golden/mergekit/$c.yml" --force --quiet \
        --out "$out/slices-$c-$dev" || return 1
    done
    cmp "$out/slices-$c-cuda/model.safetensors" "$out/slices-$c-cpu/model.safetensors" || return 1
    echo "$c: GPU and CPU outputs byte-identical"
  done
}
export -f both_devices
export -f classic_gpu
step classic-7b-gpu classic-7b-gpu.log 240 bash -c classic_gpu
step merge-example merge-example.log 60 "$revmerge" merge --device "$device" --basis 2 --force --out "$out/example-bundle" examples/adapters/chat examples/adapters/code examples/adapters/math examples/adapters/qa examples/adapters/sentiment examples/adapters/summary examples/adapters/topic examples/adapters/translate
# The whole default suite: on a machine with a GPU, `--device auto` runs every RMM CLI test there.
# The store's shared bases solve two 512 × 512 f64 eigenproblems a module (cuSOLVER's syevd on a
# GPU): the H200 check of 2026-12-04 had "shared bases" at ~37 ms a module, auto's largest step.
# Every solver at hand on that problem — LAPACK on the host, cuSOLVER's syevd / Xsyevd / syevj
# and XsyevBatched, alone and from four workers' streams at once — picks the next step (issue 20).
step eigen-512 eigen-512.log 60 "$build/bench/revmerge_bench_eigen" --n 512 --repeats 5 --workers 4
# The budgeted store on the 7b set: RMM's run and its candidates' difference Grams on the GPU
# (Backend::rmm_candidate_grams, queued by store/rmm_sides.hpp's RmmCandidateRun before the host
# measures the module's truncations), the shared bases' R × R Grams and eigensolves on a stream
# of their own (Backend::gram_f64, symmetric_eigen_f64), against RMM at the same storage (issue
# 20 asks auto ≤ 1.5× RMM's time), on the default workers sharing the GPU (the host's r × r work
# of several modules at once) against one worker (must be the same bytes), and against auto on
# the CPU: the choices should match (the candidates' f32 GEMMs and the GPU's syrk / syevd round
# differently).
store_auto() {
  /usr/bin/time -f "rmm P=4 cuda: %e s" "$revmerge" merge --device "$device" --basis 4 --force --quiet \
    --out "$out/store-rmm" "$out"/adapters-7b/task-* || return 1
  /usr/bin/time -f "auto cuda (its default workers sharing the GPU): %e s" "$revmerge" merge --device "$device" \
    --method auto --storage 0.6875 --timings --force --quiet --out "$out/store-auto" "$out"/adapters-7b/task-* || return 1
  if [ "$device" = cuda ]; then
    # --threads 4: one worker (one per four cores), as every GPU store ran before 2026-12-04.
    /usr/bin/time -f "auto cuda, one worker (--threads 4): %e s" "$revmerge" merge --device cuda --threads 4 \
      --method auto --storage 0.6875 --timings --force --quiet --out "$out/store-auto-1" "$out"/adapters-7b/task-* || return 1
    cmp "$out/store-auto/bundle.safetensors" "$out/store-auto-1/bundle.safetensors" &&
      echo "auto on the default workers sharing the GPU: the one worker's tensors byte for byte"
  fi
  /usr/bin/time -f "auto cpu: %e s" "$revmerge" merge --device cpu --method auto --storage 0.6875 \
    --force --quiet --out "$out/store-auto-cpu" "$out"/adapters-7b/task-* || return 1
  grep -c '"representation": "rmm"' "$out/store-auto/manifest.json"
  python3 - "$out/store-auto/manifest.json" "$out/store-auto-cpu/manifest.json" <<'PY'
import json, sys
keys = ("representation", "basis_a", "basis_b", "kept_ranks", "shared_rank", "shared_basis")
gpu, cpu = ([[m.get(k) for k in keys] for m in json.load(open(f))["modules"]] for f in sys.argv[1:3])
diff = sum(a != b for a, b in zip(gpu, cpu))
print("auto's choices on the GPU and the CPU:", "the same" if diff == 0 else f"{diff} modules DIFFER")
PY
}
export -f store_auto
step store-auto-7b store-auto-7b.log 200 bash -c store_auto
# A resident bundle on the GPU: one task of the 8-layer 7b bundles (RMM P = 4, and auto's)
# materialised into device buffers, against the device copy floor; then every representation
# reverted on the GPU and on the CPU, byte for byte (kernels::materialize on both).
materialize_7b() {
  # The bundles store-auto-7b makes, made here when that step did not run (GPU_CHECK_ONLY).
  [ -f "$out/store-rmm/manifest.json" ] || "$revmerge" merge --device "$device" --basis 4 --force --quiet \
    --out "$out/store-rmm" "$out"/adapters-7b/task-* || return 1
  [ -f "$out/store-auto/manifest.json" ] || "$revmerge" merge --device "$device" --method auto --storage 0.6875 \
    --force --quiet --out "$out/store-auto" "$out"/adapters-7b/task-* || return 1
  # The RMM bundle also with a GPU block taking 1, 4, 8 and 16 tiles in turn (issue 21: the
  # choice of tiles a block, measured against one tile a block, the kernel of 2026-12-04).
  for b in store-rmm store-auto; do
    "$build/bench/revmerge_bench_materialize" --device "$device" --bundle "$out/$b" --task task-3 --dtype bf16 \
      --repeats 21 $([ "$b" = store-rmm ] && echo --tiles-per-block 1,4,8,16) || return 1
  done
  for dev in cuda cpu; do
    "$revmerge" revert --device "${dev/cuda/$device}" --task task-3 --force --quiet --out "$out/revert-$dev" "$out/store-auto" || return 1
  done
  cmp "$out/revert-cuda/adapter_model.safetensors" "$out/revert-cpu/adapter_model.safetensors" &&
    echo "revert on the GPU and the CPU: byte-identical"
}
export -f materialize_7b
step materialize-7b materialize-7b.log 90 bash -c materialize_7b
# compress on the GPU, traced (issue 23 asks for the trace first), then against mergekit-extract-lora
# --cuda on the same files where the machine's Python has torch and transformers and mergekit
# was carried along (build/carry/mergekit-pkg, fetched for the GPU machine's Python by tools/gpu-pack.sh).
trace trace-compress-7b trace-compress-7b.log 90 "$revmerge" compress --device "$device" --base "$out/models-7b/base" \
  --model "$out/models-7b/ft-0" --rank 64 --force --quiet --out "$out/compress-traced"
# A resident bundle's materialize kernel (issue 21: 2.6× the copy floor on the H200, 2026-12-04).
trace trace-materialize-7b trace-materialize-7b.log 60 "$build/bench/revmerge_bench_materialize" --device "$device" \
  --bundle "$out/store-rmm" --task task-3 --dtype bf16 --repeats 3
# Where the two kernels still above their targets spend their time: one launch each of the RMM
# position routine (issue 18: 0.40-0.75 ms a module) and of materialize (issue 21: 2.5x its
# floor) under Nsight Compute's full set (replayed; the clocks left as they are). The sections
# go to the log; every SASS instruction's samples and stall reasons to NAME-sass.csv.
profile() {  # profile NAME KERNEL_REGEX CMD...
  local name=$1 kernel=$2
  shift 2
  "$ncu_bin" --clock-control none --kernel-name "regex:$kernel" --launch-count 1 --set full -f \
    -o "$out/$name" "$@" >"$out/$name-run.txt" 2>&1 || { tail -n 20 "$out/$name-run.txt"; return 1; }
  "$ncu_bin" --import "$out/$name.ncu-rep" --page details || return 1
  "$ncu_bin" --import "$out/$name.ncu-rep" --page source --print-source sass --csv >"$out/$name-sass.csv"
}
export -f profile
export ncu_bin
if [ -n "$ncu_bin" ] && [ "$device" = cuda ]; then
  step profile-rmm-position profile-rmm-position.log 120 bash -c 'profile profile-rmm-position rmm_by_teams "$@"' _ \
    "$bench" --model llama-7b --tasks 8 --rank 64 --basis 4 --layers 1 --device cuda
  step profile-materialize profile-materialize.log 120 bash -c 'profile profile-materialize materialize_tiles "$@"' _ \
    "$build/bench/revmerge_bench_materialize" --device cuda --bundle "$out/store-rmm" --task task-3 --dtype bf16 --repeats 1
else
  not_run profile-rmm-position "no ncu, or rehearsed on the CPU"
  not_run profile-materialize "no ncu, or rehearsed on the CPU"
fi
# mergekit runs where it was carried and this Python has what it needs (not on the CPU stand-in).
mergekit_here=false
[ "$device" = cuda ] && [ -d build/carry/mergekit-pkg/mergekit ] &&
  python3 -c "import torch, transformers, safetensors, numpy" 2>/dev/null && mergekit_here=true
if $mergekit_here; then
  step extract-lora-7b extract-lora-7b.log 240 python3 bench/extract_lora_bench.py --revmerge "$revmerge" --cuda \
    --shape llama-7b --layers 1 --repeats 1 --mergekit-pkg build/carry/mergekit-pkg --work "$out/extract"
else
  not_run extract-lora-7b "no build/carry/mergekit-pkg carried, no torch / transformers, or rehearsed on the CPU"
fi
# Classic merges against mergekit-yaml --cuda on the same files (issue 22: ≥ 10× mergekit --cuda,
# within 1.5× the read floor): TIES and SLERP (GPU_CHECK_MERGEKIT_METHODS: any of ties,
# dare_ties, slerp, task_arithmetic) of three llama-7b-shaped checkpoints of one layer with the
# embedding and the head, one run each. (At two layers and four methods it did not finish
# inside 136 s on the H200, 2026-12-04: writing the inputs and mergekit's runs.)
if $mergekit_here; then
  step mergekit-7b-gpu mergekit-7b-gpu.log 240 python3 bench/mergekit_bench.py --revmerge "$revmerge" --cuda \
    --layers 1 --methods "${GPU_CHECK_MERGEKIT_METHODS:-ties,slerp}" --repeats 1 --settle 1 \
    --mergekit-pkg build/carry/mergekit-pkg --work "$out/mergekit"
else
  not_run mergekit-7b-gpu "no build/carry/mergekit-pkg carried, no torch / transformers, or rehearsed on the CPU"
fi
# A whole llama-7b-shaped fine-tune compressed to rank 64 on the GPU (issue 23: within 1.3× its
# read floor, ~2-3 s from the page cache): the base and the fine-tune written (26 GB at 32
# layers; GPU_CHECK_WHOLE_LAYERS for fewer), read once into the page cache, read again by one
# reader for the floor (as the extract-lora bench's), then compress timed file to file; the
# models removed after (the machine's disk is 64 GB).
compress_whole() {
  local m=$out/models-7b-whole layers=${GPU_CHECK_WHOLE_LAYERS:-32} t0 floor_ms ms bytes
  "$build/bench/revmerge_make_models" --model llama-7b --tasks 1 --layers "$layers" --out "$m" --force || return 1
  bytes=$(cat "$m"/base/*.safetensors "$m"/ft-0/*.safetensors | wc -c)  # and into the page cache
  t0=$(date +%s%N)
  cat "$m"/base/*.safetensors "$m"/ft-0/*.safetensors >/dev/null
  floor_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  t0=$(date +%s%N)
  "$revmerge" compress --device "$device" --base "$m/base" --model "$m/ft-0" --rank 64 --dtype bf16 --force --json \
    --out "$out/compress-whole" >"$out/compress-whole.json" || { rm -rf "$m"; return 1; }
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  rm -rf "$m"
  echo "compress, whole llama-7b-shaped fine-tune ($layers layers, $(( bytes / 1000000 )) MB of both models), rank 64, bf16, on $device: $ms ms file to file"
  echo "read floor (the same bytes from the page cache, one reader): $floor_ms ms — compress $(awk -v a="$ms" -v b="$floor_ms" 'BEGIN { printf "%.2f", a / (b > 0 ? b : 1) }')× the floor"
  grep -m1 '"relative_error"' "$out/compress-whole.json" | tr -d ' ,'
}
export -f compress_whole
step compress-7b-whole compress-7b-whole.log 240 bash -c compress_whole
# Racecheck over the CUDA cases of the RMM module and of materialisation (slow under the
# sanitizer: after the figures; the 32- and 40-task shapes, a block per position, take minutes
# under it and are left out).
if command -v compute-sanitizer >/dev/null; then
  step racecheck racecheck.log 120 compute-sanitizer --tool racecheck --racecheck-report all --error-exitcode 1 \
    "$build/tests/revmerge_tests" --gtest_filter='*RmmModule*cuda*:*MaterializeOn*cuda*:-*n32_*:*n40_*'
else
  not_run racecheck "compute-sanitizer not found"
fi
# The Python package's CUDA path (DLPack device arrays, materialize on a stream) where the build
# made the package (a Python with nanobind on PATH) and torch imports; otherwise reported NOT RUN.
if compgen -G "$build/python/revmerge/_revmerge*.so" >/dev/null && python3 -c "import torch" 2>/dev/null; then
  step python-materialize-7b python-materialize-7b.log 90 env PYTHONPATH="$build/python" python3 \
    bench/materialize_python.py --device "$([ "$device" = cuda ] && echo cuda:0 || echo cpu)" --bundle "$out/store-rmm" --task task-3 --adapter "$out/adapters-7b/task-3"
else
  not_run python-materialize-7b "no Python package in this build, or no torch"
fi
step all-tests all-tests.log 200 ctest --test-dir "$build" -LE slow --output-on-failure -j "$jobs" --timeout 120
if command -v compute-sanitizer >/dev/null; then
  step memcheck memcheck.log 120 compute-sanitizer --tool memcheck --error-exitcode 1 \
    "$build/tests/revmerge_tests" --gtest_filter='*cuda*'
else
  not_run memcheck "compute-sanitizer not found"
fi
echo
echo "GPU: $(cat "$out/gpu.txt" 2>/dev/null)"
[ "$device" = cpu ] && echo "REHEARSAL (GPU_CHECK_DEVICE=cpu): the GPU steps ran on the CPU; no GPU figure here"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${prebuilt:+ (binaries built at $prebuilt)}   total: $(( $(date +%s) - t_start ))s   logs: $out"
printf '%-22s %s\n' step result
for s in "${order[@]}"; do
  printf '%-22s %s\n' "$s" "${result[$s]:-NOT RUN}"
done
grep -hE "^(cpu|cuda)|speed-up|GPU vs CPU|median/layer" "$out"/gpu-vs-cpu-7b.log "$out"/bench-*-gpu.log 2>/dev/null
grep -hE "^== teams|^cuda|GPU vs CPU" "$out"/rmm-team-lanes.log 2>/dev/null
cat "$out"/bitwise-7b.log "$out"/gpus-0-0.log "$out"/store-gpus-0-0.log "$out"/pt-svd-7b.log "$out"/full-models.log "$out"/classic-7b-gpu.log "$out"/extract-lora-7b.log "$out"/mergekit-7b-gpu.log "$out"/eigen-512.log "$out"/store-auto-7b.log "$out"/materialize-7b.log "$out"/python-materialize-7b.log "$out"/compress-7b-whole.log 2>/dev/null
grep -hE "^revmerge bench|^memory plan|^read|^upload|^compute|^write|^pipeline|^setup|^finish|^end to end|^floor|peak RSS|^sequential|^median|^  [a-z]+ +busy" "$out"/pipeline-*.log 2>/dev/null
for s in "${!result[@]}"; do [[ ${result[$s]} == FAIL* ]] && exit 1; done
exit 0
