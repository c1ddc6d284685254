#!/usr/bin/env bash
# Builds the GPU check's binaries here (CUDA configuration, sm_90) and packs them for the lent GPU
# machine, so its few minutes go to measuring rather than compiling:
#
#   tools/gpu-pack.sh            # writes build/carry/prebuilt.tar.xz (+ vendor.tar.xz, mergekit-pkg)
#   then on the GPU machine, with build/carry carried: tools/gpu-check.sh OUTDIR
#
# prebuilt.tar.xz holds build/gpu-check without its object files, and build/gpu-rtlib: the
# shared libraries the binaries load that are not the C/C++ runtime or CUDA's (OpenBLAS, LAPACKE,
# yaml-cpp, fmt, re2, Open MPI), copied from this machine. BUILD_ROOT inside it names the path the
# binaries were linked at (RUNPATH, CTest's absolute paths); gpu-check.sh links that path to its
# own checkout when they differ. vendor.tar.xz (.vendor/, tools/vendor-debs.sh) is the fallback:
# gpu-check.sh builds on the GPU machine from it when the carried binaries do not start there.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=build/gpu-check
carry=build/carry
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DREVMERGE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
fi
cmake --build "$build" -j "$(nproc)"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/build/gpu-rtlib" "$carry"
# The Python extension is left out: it is built for this machine's Python, not the GPU machine's.
tar -C . --exclude CMakeFiles --exclude '*.a' --exclude build.ninja --exclude '.ninja_*' \
  --exclude "$build/python" --exclude CMakeCache.txt -cf - "$build" | tar -C "$stage" -xf -
bins=("$build"/host/cli/revmerge "$build"/tests/revmerge_tests "$build"/tests/revmerge_cuda_tests "$build"/bench/revmerge_*)
ldd "${bins[@]}" | awk '/=>/ { print $3 }' | sort -u |
  grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|libdl|libpthread|librt|ld-linux[^/]*)\.so|/usr/local/cuda|librevmerge' |
  while read -r lib; do cp -L "$lib" "$stage/build/gpu-rtlib/"; done
echo "$root" >"$stage/build/gpu-check/BUILD_ROOT"
grep -m1 '^Python_EXECUTABLE:' "$build/CMakeCache.txt" | cut -d= -f2 >"$stage/build/gpu-check/BUILD_PYTHON" || true
grep -m1 '^CMAKE_COMMAND:' "$build/CMakeCache.txt" | cut -d= -f2 >"$stage/build/gpu-check/BUILD_CMAKE" || true
git describe --always --dirty >"$stage/build/gpu-check/BUILD_COMMIT"
tar -C "$stage" -cJf "$carry/prebuilt.tar.xz" build
if [ -f .vendor/vendor.cmake ]; then tar -cJf "$carry/vendor.tar.xz" .vendor; fi
# mergekit for the GPU machine's Python (3.12) where pip reaches PyPI: the extract-lora step.
if [ ! -d "$carry/mergekit-pkg/mergekit" ] && [ -x .venv/bin/pip ]; then
  .venv/bin/pip install -q --target "$carry/mergekit-pkg" --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    mergekit==0.1.5 immutables==0.21 pydantic==2.11.7 pydantic-core==2.33.2 annotated-types==0.7.0 \
    typing-inspection==0.4.1 || echo "gpu-pack: mergekit not fetched; extract-lora-7b will not run"
fi
du -sh "$carry"/* | sed 's/^/gpu-pack: /'
echo "gpu-pack: binaries at $(cat "$stage/build/gpu-check/BUILD_COMMIT"); carry build/carry"
