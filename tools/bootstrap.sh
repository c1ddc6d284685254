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
if ! python3 -c 'import numpy, safetensors, sklearn' 2>/dev/null; then
  echo "bootstrap: installing numpy safetensors scikit-learn (pip)"
  python3 -m pip install -q --disable-pip-version-check numpy safetensors scikit-learn ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages numpy safetensors scikit-learn
else
  echo "bootstrap: numpy, safetensors and scikit-learn present"
fi
