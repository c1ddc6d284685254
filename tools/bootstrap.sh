#!/usr/bin/env bash
# Installs what revmerge needs to build and test, from Debian packages and PyPI. Idempotent:
# installs only what is missing. Run as root (or with sudo available).
set -euo pipefail

debs=(cmake ninja-build g++ pkg-config libfmt-dev nlohmann-json3-dev libcli11-dev
      libopenblas-openmp-dev liblapacke-dev libthrust-dev libyaml-cpp-dev libgtest-dev python3 python3-pip
      clang libclang-rt-14-dev)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "bootstrap: Debian packages present"
fi

# numpy + safetensors: the independent Python cross-checks in the test suite; scikit-learn:
# the digits data set of the fidelity test (tools/eval/). PEFT/torch/mergekit are only needed
# to regenerate fixtures (tools/make_fixtures.py, tools/make_golden.py); tests that need them
# skip with a message when absent.
pip_install() {
  python3 -m pip install -q --disable-pip-version-check "$@" ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages "$@"
}
if ! python3 -c 'import numpy, safetensors' 2>/dev/null; then
  echo "bootstrap: installing numpy safetensors (pip)"
  pip_install numpy safetensors
else
  echo "bootstrap: numpy and safetensors present"
fi
if ! python3 -c 'import sklearn' 2>/dev/null; then
  echo "bootstrap: installing scikit-learn (pip)"
  # Without it only the fidelity test skips (with its reason), so a failure is not fatal here.
  pip_install scikit-learn || echo "bootstrap: WARNING: scikit-learn did not install; eval.fidelity_quick will skip"
else
  echo "bootstrap: scikit-learn present"
fi
