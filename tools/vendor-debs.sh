#!/usr/bin/env bash
# Unpacks the Debian packages revmerge builds against into .vendor/ (never over /), for
# machines that have a compiler, CMake and the CUDA toolkit but no package registry (the GPU
# check machine). Run here, where apt works; the folder then travels with the checkout.
#
#   tools/vendor-debs.sh            # writes .vendor/root and .vendor/vendor.cmake
#   cmake -C .vendor/vendor.cmake ...; export LD_LIBRARY_PATH=$(tools/vendor-debs.sh --libpath)
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=$PWD/.vendor
arch_dir=usr/lib/x86_64-linux-gnu
if [ "${1:-}" = "--libpath" ]; then
  echo "$vendor/root/$arch_dir:$vendor/root/$arch_dir/openblas-openmp"
  exit 0
fi

pkgs=(libfmt-dev libfmt9 nlohmann-json3-dev libcli11-dev libyaml-cpp-dev libyaml-cpp0.7
      libopenblas-openmp-dev libopenblas0-openmp liblapacke-dev liblapacke libtmglib3
      libgfortran5 libquadmath0 libgtest-dev libre2-dev libre2-9)
rm -rf "$vendor" && mkdir -p "$vendor/debs" "$vendor/root"
(cd "$vendor/debs" && apt-get download "${pkgs[@]}" >/dev/null)
for deb in "$vendor"/debs/*.deb; do dpkg -x "$deb" "$vendor/root"; done
rm -rf "$vendor/debs" "$vendor/root/usr/share/doc" "$vendor/root/usr/share/man" \
       "$vendor/root/usr/share/lintian"
# Static archives are not linked (except GoogleTest's, which ships only as .a): drop them.
find "$vendor/root" -name '*.a' ! -name 'libgtest*.a' ! -name 'libgmock*.a' -delete
# Debian's dev symlinks point at /etc/alternatives; point them inside the folder instead.
ob=$vendor/root/$arch_dir/openblas-openmp
ln -sf "openblas-openmp/libopenblas.so.0" "$vendor/root/$arch_dir/libopenblas.so"

cat >"$vendor/vendor.cmake" <<'CMAKE'
# Initial cache (cmake -C): find the unpacked packages under .vendor/root, nothing from /usr.
get_filename_component(_root "${CMAKE_CURRENT_LIST_DIR}/root/usr" ABSOLUTE)
set(_cm "${_root}/lib/x86_64-linux-gnu/cmake")
set(CMAKE_PREFIX_PATH "${_root}" CACHE STRING "")
set(fmt_DIR "${_cm}/fmt" CACHE PATH "")
set(yaml-cpp_DIR "${_cm}/yaml-cpp" CACHE PATH "")
set(GTest_DIR "${_cm}/GTest" CACHE PATH "")
set(nlohmann_json_DIR "${_root}/share/cmake/nlohmann_json" CACHE PATH "")
set(CLI11_DIR "${_root}/share/cmake/CLI11" CACHE PATH "")
CMAKE
du -sh "$vendor" | awk '{print "vendor-debs: " $1 " in .vendor/"}'
