"""Runs an example script (argv[1], its arguments after it) as ctest's test, skipped where the
package or a peer it imports is missing (peers.py)."""
import runpy
import sys

from peers import require

require("torch", "transformers", "peft", "revmerge")
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
