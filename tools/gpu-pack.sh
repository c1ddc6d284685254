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
# own checkout when they differ. Its build/gpu-check/python holds the Python package built for
# the GPU machine's Python 3.12 where this machine has one (build/gpu-py312; about the engine's
# build time again the first time). vendor.tar.xz (.vendor/, tools/vendor-debs.sh) is the fallback:
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
# This build's Python extension is left out (built for this machine's Python); see below.
# Left out too: what this machine's test runs left in the tree (the tests make their files
# again; the fault cases' random adapters alone are 80 MB of the 64 MiB a carry may hold).
tar -C . --exclude CMakeFiles --exclude '*.a' --exclude build.ninja --exclude '.ninja_*' \
  --exclude "$build/python" --exclude CMakeCache.txt --exclude '*.safetensors' --exclude consumer-work \
  -cf - "$build" | tar -C "$stage" -xf -
bins=("$build"/host/cli/revmerge "$build"/tests/revmerge_tests "$build"/tests/revmerge_cuda_tests "$build"/bench/revmerge_*)
ldd "${bins[@]}" | awk '/=>/ { print $3 }' | sort -u |
  grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|libdl|libpthread|librt|ld-linux[^/]*)\.so|/usr/local/cuda|librevmerge' |
  while read -r lib; do cp -L "$lib" "$stage/build/gpu-rtlib/"; done
# The Python package for the GPU machine's Python (3.12; this machine's .venv may be another):
# the extension built again against a Python 3.12 found here (pyenv's), in build/gpu-py312 with
# nanobind pinned as tools/requirements.txt pins it, and put where gpu-check.sh looks for it; it
# loads the gpu-check build's librevmerge (the same sources) through LD_LIBRARY_PATH there.
py312=""
for c in python3.12 "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.12.*/bin/python3.12; do
  if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then py312=$c; break; fi
done
if [ -n "$py312" ]; then
  nanobind=$(grep -m1 '^nanobind==' tools/requirements.txt)
  [ -x build/py312-venv/bin/python ] || "$py312" -m venv build/py312-venv
  build/py312-venv/bin/pip install -q "$nanobind"
  [ -f build/gpu-py312/build.ninja ] ||
    cmake -S . -B build/gpu-py312 -G Ninja -DCMAKE_BUILD_TYPE=Release -DREVMERGE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DREVMERGE_PYTHON=ON -DPython_EXECUTABLE="$root/build/py312-venv/bin/python"
  cmake --build build/gpu-py312 --target _revmerge -j "$(nproc)"
  mkdir -p "$stage/$build/python"
  cp -r build/gpu-py312/python/revmerge "$stage/$build/python/"
  echo "gpu-pack: the Python package built for $("$py312" --version 2>&1)"
else
  echo "gpu-pack: no Python 3.12 here; python-materialize-7b will not run on the GPU machine"
fi
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
