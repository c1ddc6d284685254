#!/usr/bin/env bash
# revmerge's slerp, nearswap and model_stock against mergekit's formulas written in numpy the way mergekit
# computes them (f32; slerp's DOT_THRESHOLD and eps; tools/blend_numpy.py), on the committed tiny
# models, from the CLI and from a mergekit config: several t, and for slerp a fine-tune parallel
# to its base (the linear branch). Exit 77 (skipped) without numpy + safetensors.
set -euo pipefail
revmerge=$1 src=$(cd "$2" && pwd) work=$3
if ! python3 -c 'import numpy, safetensors' 2>/dev/null; then
  echo "SKIPPED: python3 with numpy and safetensors is not installed (tools/bootstrap.sh installs them)"
  [ "${REVMERGE_REQUIRE_PYTHON_PEERS:-0}" = 1 ] && { echo "FAIL: required here (REVMERGE_REQUIRE_PYTHON_PEERS=1)"; exit 1; }; exit 77
fi
rm -rf "$work" && mkdir -p "$work"
golden=$src/tests/fixtures/golden/mergekit
for t in 0 0.3 0.5 1 1.25; do
  "$revmerge" merge -q --method slerp --t "$t" --base "$golden/base" --out "$work/t$t" "$golden/ft2"
  python3 "$src/tools/blend_numpy.py" slerp "$golden/base" "$golden/ft2" "$t" "$work/t$t"
done
# A mergekit config: the base listed among the models, t among the parameters.
cat >"$work/slerp.yml" <<YML
merge_method: slerp
base_model: $golden/base
models:
  - model: $golden/base
  - model: $golden/ft0
parameters:
  t: 0.6
dtype: float16
YML
"$revmerge" merge -q --config "$work/slerp.yml" --out "$work/config"
python3 "$src/tools/blend_numpy.py" slerp "$golden/base" "$golden/ft0" 0.6 "$work/config" --tol 1e-3
# A "fine-tune" that is the base scaled by 1.5: every tensor is parallel to the base's.
python3 - "$golden/base" "$work/scaled" <<'PY'
import shutil, sys, numpy as np
from pathlib import Path
from safetensors.numpy import load_file, save_file
src, out = Path(sys.argv[1]), Path(sys.argv[2])
shutil.copytree(src, out)
for f in src.glob("*.safetensors"):
    save_file({k: (v * np.float32(1.5)).astype(v.dtype) for k, v in load_file(f).items()}, out / f.name)
PY
"$revmerge" merge -q --method slerp --t 0.4 --base "$golden/base" --out "$work/parallel" "$work/scaled"
python3 "$src/tools/blend_numpy.py" slerp "$golden/base" "$work/scaled" 0.4 "$work/parallel" --expect-linear
# nearswap: thresholds below, around and above the typical difference between the models.
for t in 0.0001 0.01 0.1 10; do
  "$revmerge" merge -q --method nearswap --t "$t" --base "$golden/base" --out "$work/near$t" "$golden/ft1"
  python3 "$src/tools/blend_numpy.py" nearswap "$golden/base" "$golden/ft1" "$t" "$work/near$t" --tol 1e-6
done
cat >"$work/nearswap.yml" <<YML
merge_method: nearswap
base_model: $golden/base
models:
  - model: $golden/ft2
parameters:
  t: 0.02
YML
"$revmerge" merge -q --config "$work/nearswap.yml" --out "$work/near-config"
python3 "$src/tools/blend_numpy.py" nearswap "$golden/base" "$golden/ft2" 0.02 "$work/near-config" --tol 1e-6
# model_stock: two and three fine-tunes, from the CLI and from a mergekit config.
"$revmerge" merge -q --method model_stock --base "$golden/base" --out "$work/stock2" "$golden/ft0" "$golden/ft1"
python3 "$src/tools/blend_numpy.py" model_stock "$golden/base" "$golden/ft0,$golden/ft1" 0 "$work/stock2" --tol 1e-5
cat >"$work/stock.yml" <<YML
merge_method: model_stock
base_model: $golden/base
models:
  - model: $golden/ft0
  - model: $golden/ft1
  - model: $golden/ft2
dtype: float32
YML
"$revmerge" merge -q --config "$work/stock.yml" --out "$work/stock3"
python3 "$src/tools/blend_numpy.py" model_stock "$golden/base" "$golden/ft0,$golden/ft1,$golden/ft2" 0 "$work/stock3" --tol 1e-5
