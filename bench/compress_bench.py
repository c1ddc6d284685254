#!/usr/bin/env python3
"""PT-SVD of an LLM-shaped full fine-tune: `revmerge compress` against a numpy randomized SVD
(the same algorithm: Gaussian sketch, oversampling, power iterations with QR, small SVD) and
against numpy's exact SVD, on the same matrices, side by side in one run, beside the floor (the
time to read the two models' bytes).

    python3 bench/compress_bench.py --revmerge build/release/host/cli/revmerge \
        [--model llama-7b] [--rank 64] [--exact q_proj,up_proj] [--device cpu] [--json OUT]

One transformer layer of the chosen shape is written as a base and a fine-tune (f32) whose
deltas have a decaying spectrum plus noise. numpy's exact SVD is timed on the modules named by
--exact only (it takes minutes per large matrix on 2 cores); its truncation error is the
reference for revmerge's on those modules.
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

SHAPES = {"tiny": (64, 128, 64), "llama-7b": (4096, 11008, 4096), "llama-70b": (8192, 28672, 1024)}


def modules(model):
    hidden, inter, kv = SHAPES[model]
    return {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden),
            "self_attn.v_proj": (kv, hidden), "self_attn.o_proj": (hidden, hidden),
            "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
            "mlp.down_proj": (hidden, inter)}


def write_pair(root: Path, model: str, seed=0):
    rng = np.random.default_rng(seed)
    base, ft = {}, {}
    for name, (out, inp) in modules(model).items():
        key = f"model.layers.0.{name}.weight"
        w = rng.standard_normal((out, inp), dtype=np.float32) * 0.02
        k = 96  # the delta: 96 directions with decaying weights, and noise
        u = rng.standard_normal((out, k), dtype=np.float32)
        v = rng.standard_normal((k, inp), dtype=np.float32)
        s = (0.9 ** np.arange(k)).astype(np.float32) * 1e-3
        d = (u * s) @ v + 1e-5 * rng.standard_normal((out, inp), dtype=np.float32)
        base[key], ft[key] = w, w + d
    for folder, tensors in (("base", base), ("ft", ft)):
        (root / folder).mkdir(parents=True)
        save_file(tensors, str(root / folder / "model.safetensors"))
        (root / folder / "config.json").write_text(json.dumps({"model_type": "llama"}))


def numpy_rsvd(a, k, p, q, rng):
    l = min(k + p, *a.shape)
    y = a @ rng.standard_normal((a.shape[1], l))
    qm, _ = np.linalg.qr(y)
    for _ in range(q):
        z, _ = np.linalg.qr(a.T @ qm)
        qm, _ = np.linalg.qr(a @ z)
    ub, s, vt = np.linalg.svd(qm.T @ a, full_matrices=False)
    return (qm @ ub)[:, :k], s[:k], vt[:k]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--revmerge", required=True)
    ap.add_argument("--model", default="llama-7b", choices=sorted(SHAPES))
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--oversampling", type=int, default=8)
    ap.add_argument("--power-iterations", type=int, default=2)
    ap.add_argument("--exact", default="q_proj,up_proj", help="modules numpy's exact SVD runs on")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                    help="where revmerge's SVDs run (numpy's always run on the CPU)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="revmerge-compress-bench-"))
    try:
        write_pair(work, args.model)
        t0 = time.perf_counter()
        for f in ("base", "ft"):
            with open(work / f / "model.safetensors", "rb") as fh:
                while fh.read(1 << 24):
                    pass
        floor = time.perf_counter() - t0
        nbytes = sum((work / f / "model.safetensors").stat().st_size for f in ("base", "ft"))

        t0 = time.perf_counter()
        report = json.loads(subprocess.run(
            [args.revmerge, "compress", "--base", work / "base", "--model", work / "ft",
             "--rank", str(args.rank), "--oversampling", str(args.oversampling),
             "--power-iterations", str(args.power_iterations), "--device", args.device,
             "--out", work / "adapter", "--json"],
            check=True, capture_output=True, text=True).stdout)
        ours = time.perf_counter() - t0
        ours_err = {m["path"].split(".", 3)[-1]: m["relative_error"] for m in report["modules"]}

        b, f = load_file(str(work / "base" / "model.safetensors")), load_file(str(work / "ft" / "model.safetensors"))
        rng = np.random.default_rng(0)
        numpy_time, exact_rows = 0.0, []
        exact_names = set(args.exact.split(",")) if args.exact else set()
        for key in sorted(b):
            t0 = time.perf_counter()
            d = f[key].astype(np.float64) - b[key].astype(np.float64)
            u, s, vt = numpy_rsvd(d, args.rank, args.oversampling, args.power_iterations, rng)
            numpy_time += time.perf_counter() - t0
            name = key.split(".", 3)[-1].removesuffix(".weight")
            if name.split(".")[-1] in exact_names:
                t0 = time.perf_counter()
                se = np.linalg.svd(d, compute_uv=False)
                te = time.perf_counter() - t0
                best = float(np.sqrt((se[args.rank:] ** 2).sum() / (se ** 2).sum()))
                exact_rows.append({"module": name, "shape": list(d.shape), "exact_svd_s": te,
                                   "exact_error": best, "revmerge_error": ours_err[name],
                                   "ratio": ours_err[name] / best})
        result = {"model": args.model, "device": report["device"], "rank": args.rank, "oversampling": args.oversampling,
                  "power_iterations": args.power_iterations, "bytes_read": nbytes,
                  "read_floor_s": floor, "revmerge_s": ours, "numpy_rsvd_s": numpy_time,
                  "revmerge_relative_error": report["relative_error"], "exact": exact_rows}
        print(f"{args.model} layer, rank {args.rank}: revmerge compress on {report['device']} {ours:.2f} s (file to file) | "
              f"numpy randomized SVD {numpy_time:.2f} s (compute only) | read floor {floor:.2f} s "
              f"for {nbytes / 1e9:.2f} GB")
        for r in exact_rows:
            print(f"  {r['module']:<18} {r['shape']}: numpy exact SVD {r['exact_svd_s']:.1f} s; "
                  f"error revmerge {r['revmerge_error']:.5f} vs exact truncation {r['exact_error']:.5f} "
                  f"({r['ratio']:.4f}x)")
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
