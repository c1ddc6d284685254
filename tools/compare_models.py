#!/usr/bin/env python3
"""Compares two model folders (safetensors, single or sharded) tensor by tensor: the same
names, shapes and dtypes, and values within a relative tolerance. Prints the largest
difference; exit status 1 when the folders differ beyond it.

    python3 tools/compare_models.py OURS REFERENCE [--tol 1e-5]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def load(folder: Path):
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    if not tensors:
        sys.exit(f"{folder}: no safetensors files")
    return tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("ours", type=Path)
    ap.add_argument("reference", type=Path)
    ap.add_argument("--tol", type=float, default=1e-5,
                    help="largest |ours − reference| / max(|reference|), per tensor")
    args = ap.parse_args()
    ours, ref = load(args.ours), load(args.reference)
    if set(ours) != set(ref):
        sys.exit(f"tensor names differ: only ours {sorted(set(ours) - set(ref))}, "
                 f"only reference {sorted(set(ref) - set(ours))}")
    worst, worst_name = 0.0, ""
    for name, r in ref.items():
        o = ours[name]
        if o.shape != r.shape or o.dtype != r.dtype:
            sys.exit(f"{name}: {o.dtype}{list(o.shape)} against {r.dtype}{list(r.shape)}")
        r64, o64 = r.astype(np.float64), o.astype(np.float64)
        scale = max(float(np.abs(r64).max()), 1e-12)
        d = float(np.abs(o64 - r64).max()) / scale
        if d > worst:
            worst, worst_name = d, name
    print(f"{len(ref)} tensors, largest relative difference {worst:.3g} ({worst_name or '-'})")
    sys.exit(1 if worst > args.tol else 0)


if __name__ == "__main__":
    main()
