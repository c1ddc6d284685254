#!/usr/bin/env python3
"""RMM written the way a numpy user would batch it: the peer for `revmerge bench`.

The same computation as `revmerge merge --method rmm`, file to file, module by module: read each
task's factors (scale folded into B, ranks padded), stack them position-major, centre, one
batched Gram (np.matmul), one batched eigendecomposition (np.linalg.eigh, float64 like revmerge),
top-P basis normalised with its coefficients, reconstruction, per-task delta and factor errors
through r x r Grams, and the mean / basis / coef tensors written to one safetensors file. Float32
throughout except the eigensolve, as revmerge does. It is a timing peer, not a reference: the
float64 cross-check is tools/rmm_numpy.py.

    python3 tools/rmm_numpy_batched.py --basis P --out FILE.safetensors ADAPTER...

Prints one JSON line: {"seconds": ..., "read_seconds": ..., "bytes_read": ..., "modules": ...}.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rmm_numpy import load_file, pattern_value  # noqa: E402  (BF16-aware reader, PEFT's pattern lookup)

def read_tensors(path):
    """Every tensor of a safetensors file as float32, and the file's size."""
    return {k: v.astype(np.float32, copy=False) for k, v in load_file(path).items()}, Path(path).stat().st_size


def load_adapter(folder):
    cfg = json.loads((Path(folder) / "adapter_config.json").read_text())
    raw, nbytes = read_tensors(Path(folder) / "adapter_model.safetensors")
    modules = {}
    for key, a in raw.items():
        if not key.endswith(".lora_A.weight"):
            continue
        path = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        r = pattern_value(cfg.get("rank_pattern") or {}, path, cfg["r"])
        alpha = pattern_value(cfg.get("alpha_pattern") or {}, path, cfg["lora_alpha"])
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        modules[path] = (a, raw[key.replace(".lora_A.", ".lora_B.")] * np.float32(scale))
    return modules, nbytes


def rmm_side(x, p):
    """x: m x r x n float32. Returns mean, basis (m x r x p), coef (m x p x n), recon (m x r x n)."""
    mean = x.mean(axis=2, dtype=np.float32)
    xc = x - mean[:, :, None]
    gram = np.matmul(xc.transpose(0, 2, 1), xc)                 # m x n x n
    w, v = np.linalg.eigh(gram.astype(np.float64))             # ascending
    n = x.shape[2]
    wp = v[:, :, ::-1][:, :, :p]
    wp = (wp - wp.mean(axis=1, keepdims=True)).astype(np.float32)  # orthogonal to the ones vector
    basis = np.matmul(xc, wp)                                     # m x r x p
    norm = np.linalg.norm(basis, axis=1)                          # m x p
    top = w[:, -1:]
    keep = norm.astype(np.float64) ** 2 > (n * n * 2.0 ** -46) * np.maximum(top, 0)
    safe = np.where(keep, norm, 1.0).astype(np.float32)
    basis = np.where(keep[:, None, :], basis / safe[:, None, :], 0).astype(np.float32)
    coef = np.where(keep[:, :, None], safe[:, :, None] * wp.transpose(0, 2, 1), 0).astype(np.float32)
    recon = mean[:, :, None] + np.matmul(basis, coef)
    return mean, basis, coef, recon


def merge(adapters, p):
    tensors, errors = {}, {}
    for path in sorted(adapters[0]):
        parts = [ad[path] for ad in adapters]
        r = max(a.shape[0] for a, _ in parts)
        n = len(parts)
        a_stack = np.zeros((n, r, parts[0][0].shape[1]), np.float32)
        b_stack = np.zeros((n, parts[0][1].shape[0], r), np.float32)
        for i, (a, b) in enumerate(parts):
            a_stack[i, : a.shape[0]] = a
            b_stack[i, :, : b.shape[1]] = b
        ha = hb = None
        for side, x in (("lora_A", a_stack.transpose(2, 1, 0)), ("lora_B", b_stack.transpose(1, 2, 0))):
            mean, basis, coef, recon = rmm_side(np.ascontiguousarray(x), p)
            tensors[f"{path}.{side}.mean"] = mean
            tensors[f"{path}.{side}.basis"] = basis
            tensors[f"{path}.{side}.coef"] = coef
            if side == "lora_A":
                ha = recon.transpose(2, 1, 0)
            else:
                hb = recon.transpose(2, 0, 1)
        da, db = ha - a_stack, hb - b_stack
        aat = np.matmul(a_stack, a_stack.transpose(0, 2, 1))
        dadat = np.matmul(da, da.transpose(0, 2, 1))
        daat = np.matmul(da, a_stack.transpose(0, 2, 1))
        btb = np.matmul(b_stack.transpose(0, 2, 1), b_stack)
        hbthb = np.matmul(hb.transpose(0, 2, 1), hb)
        dbtdb = np.matmul(db.transpose(0, 2, 1), db)
        hbtdb = np.matmul(hb.transpose(0, 2, 1), db)
        num = (np.einsum("nij,nij->n", hbthb, dadat, dtype=np.float64)
               + np.einsum("nij,nij->n", dbtdb, aat, dtype=np.float64)
               + 2 * np.einsum("nij,nij->n", hbtdb, daat, dtype=np.float64))
        den = np.einsum("nij,nij->n", btb, aat, dtype=np.float64)
        errors[path] = np.sqrt(np.maximum(num, 0) / np.maximum(den, 1e-300)).tolist()
    return tensors, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapters", nargs="+")
    ap.add_argument("--basis", "-p", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    loaded = [load_adapter(a) for a in args.adapters]
    read_seconds = time.perf_counter() - t0
    tensors, errors = merge([m for m, _ in loaded], args.basis)
    save_file(tensors, args.out, metadata={"format": "rmm-numpy-batched"})
    seconds = time.perf_counter() - t0
    worst = max(max(e) for e in errors.values())
    print(json.dumps({"seconds": seconds, "read_seconds": read_seconds,
                      "bytes_read": sum(b for _, b in loaded), "modules": len(errors),
                      "worst_delta_error": worst}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
