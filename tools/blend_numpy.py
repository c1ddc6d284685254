#!/usr/bin/env python3
"""Checks a model revmerge merged with --method slerp or nearswap against mergekit's method
computed as mergekit computes it, in float32:
  slerp: each tensor flattened to one vector, normalised where its norm exceeds 1e-8, the dot
  product summed in float32, the linear formula where |dot| > 0.9995, else
  sin((1 - t) theta) / sin(theta) * v0 + sin(t theta) / sin(theta) * v1;
  nearswap: w = clamp(t / max(|v0 - v1|, 1e-6), 0, 1), w * v1 + (1 - w) * v0;
  model_stock: offsets d_i = w_i - w0, cos = mean over pairs of clamp(d_i.d_j / max(|d_i||d_j|,
  1e-6), -1, 1), t = N cos / (1 + (N - 1) cos), t * mean(w_i) + (1 - t) * w0 (FINE_TUNE is a
  comma-separated list, T is not used).

    blend_numpy.py {slerp,nearswap,model_stock} BASE FINE_TUNE T MERGED [--tol 1e-5] [--expect-linear]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def tensors(folder):
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def as_f32(v):
    return v.astype(np.float32)


def mergekit_slerp(t, v0, v1, dot_threshold=0.9995, eps=1e-8):
    c0, c1 = v0.copy(), v1.copy()
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    if n0 > eps:
        v0 = v0 / n0
    if n1 > eps:
        v1 = v1 / n1
    dot = np.sum(v0 * v1)
    if np.abs(dot) > dot_threshold:
        return (1 - t) * c0 + t * c1, True
    theta0 = np.arccos(dot)
    s = np.sin(theta0)
    theta_t = theta0 * t
    return np.sin(theta0 - theta_t) / s * c0 + np.sin(theta_t) / s * c1, False


def mergekit_nearswap(t, v0, v1):
    w = np.clip(np.float32(t) / np.maximum(np.abs(v0 - v1), np.float32(1e-6)), 0.0, 1.0).astype(np.float32)
    return w * v1 + (np.float32(1) - w) * v0


def mergekit_model_stock(w0, ws):
    offsets = [w - w0 for w in ws]
    cos = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            norm = np.linalg.norm(offsets[i]) * np.linalg.norm(offsets[j])
            cos.append(np.clip(np.sum(offsets[i] * offsets[j]) / max(norm, np.float32(1e-6)), -1, 1))
    c = np.float32(np.mean(np.array(cos, np.float32)))
    n = len(ws)
    t = (n * c) / (1 + (n - 1) * c)
    return t * (sum(ws) / np.float32(n)) + (1 - t) * w0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("method", choices=["slerp", "nearswap", "model_stock"])
    ap.add_argument("base")
    ap.add_argument("fine_tune")
    ap.add_argument("t", type=float)
    ap.add_argument("merged")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--expect-linear", action="store_true")
    a = ap.parse_args()
    base, got = tensors(a.base), tensors(a.merged)
    fts = [tensors(f) for f in a.fine_tune.split(",")]
    ft = fts[0]
    assert set(got) == set(base), f"tensor names differ: {sorted(set(got) ^ set(base))}"
    worst, linear = 0.0, 0
    for name, v in base.items():
        v0, v1 = as_f32(v).ravel(), as_f32(ft[name]).ravel()
        if a.method == "model_stock":
            want, lin = mergekit_model_stock(v0, [as_f32(f[name]).ravel() for f in fts]), False
        elif a.method == "slerp":
            want, lin = mergekit_slerp(np.float32(a.t), v0, v1)
        else:
            want, lin = mergekit_nearswap(np.float32(a.t), v0, v1), False
        linear += lin
        g = as_f32(got[name]).ravel()
        rel = np.max(np.abs(g - want)) / max(np.max(np.abs(want)), 1e-30)
        worst = max(worst, float(rel))
        if rel > a.tol:
            sys.exit(f"FAIL: {name}: largest difference {rel:.3g} of the largest value (tolerance {a.tol})")
    if a.expect_linear and linear != len(base):
        sys.exit(f"FAIL: {len(base) - linear} tensors did not take the linear branch")
    what = f" ({linear} by its linear branch)" if a.method == "slerp" else ""
    how = f"{len(fts)} fine-tunes" if a.method == "model_stock" else f"t={a.t}"
    print(f"{a.method} {how}: {len(base)} tensors within {worst:.2e} of mergekit's formula{what}")


if __name__ == "__main__":
    main()
