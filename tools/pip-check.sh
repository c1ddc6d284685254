#!/usr/bin/env bash
# `pip install .` as a user runs it, checked: builds the wheel from this checkout (build isolation:
# pip fetches the pinned scikit-build-core and nanobind), installs it into build/pip-check/site,
# and runs the package's tests (tests/python/test_package.py) against that installed copy with the
# project's .venv (numpy, torch, safetensors). tools/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
site=build/pip-check/site
rm -rf "$site"
"$python" -m pip install --disable-pip-version-check -q --target "$site" .
PYTHONPATH="$PWD/$site" REVMERGE_REQUIRE_PYTHON_PEERS=1 "$python" - <<'PY'
import revmerge, pathlib
where = pathlib.Path(revmerge.__file__).parent
assert where.parent.name == "site", f"imported {where}, not the installed copy"
print(f"pip install .: revmerge {revmerge.__version__} from {where}, OpenBLAS {revmerge.blas_kernels()} kernels")
PY
PYTHONPATH="$PWD/$site" REVMERGE_REQUIRE_PYTHON_PEERS=1 "$python" tests/python/test_package.py
