#!/usr/bin/env bash
# Installs what revmerge needs to build and test, from Debian packages and PyPI. Idempotent:
# installs only what is missing. Run as root (or with sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(cmake ninja-build g++ pkg-config libfmt-dev nlohmann-json3-dev libcli11-dev
      libopenblas-openmp-dev liblapacke-dev libthrust-dev libyaml-cpp-dev libre2-dev libgtest-dev python3 python3-dev python3-pip
      python3-venv strace openmpi-bin libopenmpi-dev
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

# The Python peers (numpy, safetensors, scikit-learn, torch, transformers, PEFT: the cross-checks
# and the fidelity test) live in the project's virtual environment, .venv, at the versions
# tools/requirements.txt pins; it is made once and reused, and remade when that file changes.
# tools/test.sh and tools/example.sh put .venv/bin first on PATH. (torch from PyPI brings its
# CUDA libraries: ~5.6 GB, a few minutes the first time.)
venv=.venv
stamp=$venv/.requirements.sha256
want=$(sha256sum tools/requirements.txt | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "bootstrap: Python peers present in $venv"
else
  echo "bootstrap: installing the Python peers into $venv (tools/requirements.txt)"
  python3 -m venv "$venv" 2>/dev/null || {
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends python3-venv
    python3 -m venv "$venv"
  }
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r tools/requirements.txt
  echo "$want" >"$stamp"
fi
