"""The tests' imports checked first: a missing package (revmerge itself where it was not built,
or a Python peer) makes the test report itself skipped — exit status 77, which ctest counts as a
skip — except where REVMERGE_REQUIRE_PYTHON_PEERS=1 (tools/test.sh), where it fails."""
import importlib
import os
import sys


def require(*modules):
    try:
        for name in modules:
            importlib.import_module(name)
    except ImportError as e:
        if os.environ.get("REVMERGE_REQUIRE_PYTHON_PEERS") == "1":
            raise
        print(f"SKIPPED: {e} (the Python package is built when the Python on PATH has nanobind)")
        sys.exit(77)
