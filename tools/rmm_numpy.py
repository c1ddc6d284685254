#!/usr/bin/env python3
"""Independent cross-check of a revmerge bundle (format version 1 or 2), in float64 numpy.

From the adapter files alone it recomputes each module's representation and compares with what
the bundle stores:
  * rmm modules (scale folding, rank padding, per-position centring, Gram eigendecomposition,
    top-P projection, P per side in version 2, 0 for the mean alone): every task's
    reconstructed factors (bundle: mean + basis @ coef) against the numpy projection, as the
    largest difference relative to the module's largest factor entry; storage ratio against
    (P(r+n)+r)/(n r) per side;
  * rank modules (version 2): every task's stored product B'A' against numpy's SVD of the dense
    delta s·B·A truncated to the kept rank, relative to ||BA||_F; storage ratio against
    sum(k)/sum(r);
  * shared_rows modules (version 2): every task's stored B~_i V^T against numpy's projection of
    its dense delta on the top K right singular vectors of the stacked deltas;
  * shared modules (version 2): every task's stored U (U^T s B_i)(A_i V) V^T against numpy's
    two-sided projection U U^T dW_i V V^T, U the top Ku left singular vectors of the deltas side
    by side, V the top Kv right singular vectors of the deltas stacked;
  * for all, the manifest's per-task delta errors against dense ||B^A^ - BA||_F / ||BA||_F.

    python3 tools/rmm_numpy.py BUNDLE [--adapters DIR ...] [--tol 1e-4]

Without --adapters the task sources recorded in the manifest are used. Exit status 0 when all
differences are within the tolerance. Reading the bundle needs only numpy and safetensors.
"""
import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np


_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def load_file(path):
    """A safetensors file as float numpy arrays, BF16 included (numpy has no bfloat16: its bits
    are the top half of a float32)."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        begin, end = t["data_offsets"]
        raw = np.frombuffer(data, dtype=_DTYPES[t["dtype"]], count=(end - begin) // np.dtype(_DTYPES[t["dtype"]]).itemsize,
                            offset=8 + n + begin)
        if t["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = raw.reshape(t["shape"])
    return out


def pattern_value(patterns, path, default):
    """PEFT's get_pattern_key: the first key k with re.match(rf"(.*\\.)?({k})$", path)."""
    for key in sorted(patterns):
        if re.match(rf"(.*\.)?({key})$", path):
            return patterns[key]
    return default


def load_adapter(folder):
    cfg = json.loads((Path(folder) / "adapter_config.json").read_text())
    raw = load_file(str(Path(folder) / "adapter_model.safetensors"))
    raw = {k: v.astype(np.float64) for k, v in raw.items()}
    modules = {}
    for key, a in raw.items():
        if not key.endswith(".lora_A.weight"):
            continue
        path = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = raw[key.replace(".lora_A.", ".lora_B.")]
        r = pattern_value(cfg.get("rank_pattern") or {}, path, cfg["r"])
        alpha = pattern_value(cfg.get("alpha_pattern") or {}, path, cfg["lora_alpha"])
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        modules[path] = (a, b * scale)  # scale folded into B
    return modules


def rmm_projection(x, p):
    """x: positions x r x n. Returns mu + X~ W_p W_p^T (positions x r x n), float64."""
    mu = x.mean(axis=2, keepdims=True)
    xc = x - mu
    g = np.einsum("mri,mrj->mij", xc, xc)
    _, w = np.linalg.eigh(g)             # ascending
    wp = w[:, :, ::-1][:, :, :p]        # top p
    return mu + np.einsum("mrn,mnq,mkq->mrk", xc, wp, wp)


def bundle_positions(tensors, path, side, n):
    mean = tensors[f"{path}.{side}.mean"].astype(np.float64)    # m x r
    if f"{path}.{side}.basis" not in tensors:                   # version 2, P = 0: the mean alone
        return np.repeat(mean[:, :, None], n, axis=2)
    basis = tensors[f"{path}.{side}.basis"].astype(np.float64)  # m x r x p
    coef = tensors[f"{path}.{side}.coef"].astype(np.float64)    # m x p x n
    return mean[:, :, None] + basis @ coef                      # m x r x n


def check_truncations(path, part, kept, tensors, adapters, delta_errors):
    """Stacked truncations (a version 2 rank module's "factors", or the "added" tasks'): each
    task's stored B'A' against numpy's SVD of its dense delta truncated to its kept rank; returns
    the (reconstruction, delta error) differences."""
    total = sum(kept)
    if total:
        a_all = tensors[f"{path}.lora_A.{part}"].astype(np.float64)   # total x in
        b_all = tensors[f"{path}.lora_B.{part}"].astype(np.float64)   # out x total
    recon = delta = 0.0
    off = 0
    for i, ad in enumerate(adapters):
        a, b = ad[path]                 # scale already folded into b
        dense = b @ a
        norm = max(np.linalg.norm(dense), 1e-300)
        u, s, vt = np.linalg.svd(dense, full_matrices=False)
        k = kept[i]
        ref = (u[:, :k] * s[:k]) @ vt[:k]
        got = b_all[:, off:off + k] @ a_all[off:off + k] if k else np.zeros_like(dense)
        off += k
        recon = max(recon, float(np.linalg.norm(got - ref) / norm))
        err = np.linalg.norm(got - dense) / norm
        delta = max(delta, abs(err - delta_errors[i]) / max(err, 1e-3))
    return recon, delta


def check_shared_rows(mod, tensors, adapters):
    """A version 2 shared_rows module: each task's stored B~_i V^T against numpy's projection of
    its dense delta onto the top K right singular vectors of all tasks' stacked deltas; returns
    the (reconstruction, delta error) differences."""
    path, k = mod["path"], mod["shared_rank"]
    dense = [b @ a for a, b in (ad[path] for ad in adapters)]
    _, _, vt = np.linalg.svd(np.vstack(dense), full_matrices=False)
    v = vt[:k].T                                                    # in x K
    vs = tensors[f"{path}.lora_A.shared"].astype(np.float64)        # K x in
    bs = tensors[f"{path}.lora_B.shared"].astype(np.float64)        # out x (n K)
    recon = delta = 0.0
    for i, d in enumerate(dense):
        norm = max(np.linalg.norm(d), 1e-300)
        got = bs[:, i * k:(i + 1) * k] @ vs
        recon = max(recon, float(np.linalg.norm(got - d @ v @ v.T) / norm))
        err = np.linalg.norm(got - d) / norm
        delta = max(delta, abs(err - mod["delta_error"][i]) / max(err, 1e-3))
    return recon, delta


def check_shared(mod, tensors, adapters):
    """A version 2 shared module: each task's factors as stored, U core_b_i and core_a_i V^T,
    multiplied out, against numpy's two-sided projection of its dense delta; returns the
    (reconstruction, delta error) differences."""
    path, (kv, ku) = mod["path"], mod["shared_basis"]
    dense = [b @ a for a, b in (ad[path] for ad in adapters)]
    _, _, vt = np.linalg.svd(np.vstack(dense), full_matrices=False)
    u, _, _ = np.linalg.svd(np.hstack(dense), full_matrices=False)
    v, u = vt[:kv].T, u[:, :ku]                                     # in x Kv, out x Ku
    vs = tensors[f"{path}.lora_A.shared"].astype(np.float64)        # Kv x in
    us = tensors[f"{path}.lora_B.shared"].astype(np.float64)        # out x Ku
    ca = tensors[f"{path}.lora_A.cores"].astype(np.float64)         # sum(r) x Kv
    cb = tensors[f"{path}.lora_B.cores"].astype(np.float64)         # Ku x sum(r)
    recon = delta = 0.0
    off = 0
    for i, d in enumerate(dense):
        r = mod["task_ranks"][i]
        norm = max(np.linalg.norm(d), 1e-300)
        got = (us @ cb[:, off:off + r]) @ (ca[off:off + r] @ vs)
        off += r
        recon = max(recon, float(np.linalg.norm(got - u @ u.T @ d @ v @ v.T) / norm))
        err = np.linalg.norm(got - d) / norm
        delta = max(delta, abs(err - mod["delta_error"][i]) / max(err, 1e-3))
    return recon, delta


def load_bundle_tensors(bundle):
    """The bundle's tensors: one file, or the shards its index lists (merge --shard-per-rank)."""
    index = bundle / "bundle.safetensors.index.json"
    if not index.exists():
        return load_file(str(bundle / "bundle.safetensors"))
    tensors = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        tensors.update(load_file(str(bundle / shard)))
    return tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--adapters", nargs="*", help="adapter folders, in the bundle's task order")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    tensors = load_bundle_tensors(args.bundle)
    sources = args.adapters or [t["source"] for t in manifest["tasks"]]
    adapters = [load_adapter(s) for s in sources]
    # Version 2 after `revmerge add`: the representations cover the first base_tasks tasks, the
    # rest are stacked truncations of their own ("added").
    n_all = len(adapters)
    n = manifest.get("base_tasks", n_all)
    worst_recon = worst_delta = worst_storage = 0.0
    t0 = time.perf_counter()
    kinds = {}
    for mod in manifest["modules"]:
        path, r = mod["path"], mod["rank"]
        kind = mod.get("representation", "rmm")
        kinds[kind] = kinds.get(kind, 0) + 1
        added = mod.get("added_kept_ranks", [])
        if added:
            recon, delta = check_truncations(path, "added", added, tensors, adapters[n:], mod["delta_error"][n:])
            worst_recon, worst_delta = max(worst_recon, recon), max(worst_delta, delta)
        raw = sum(mod["task_ranks"]) * (mod["in"] + mod["out"])
        if kind == "shared_rows":
            recon, delta = check_shared_rows(mod, tensors, adapters[:n])
            worst_recon, worst_delta = max(worst_recon, recon), max(worst_delta, delta)
            stored = mod["shared_rank"] * (mod["in"] + n * mod["out"]) + sum(added) * (mod["in"] + mod["out"])
            worst_storage = max(worst_storage, abs(stored / raw - mod["storage_ratio"]))
            continue
        if kind == "shared":
            recon, delta = check_shared(mod, tensors, adapters[:n])
            worst_recon, worst_delta = max(worst_recon, recon), max(worst_delta, delta)
            kv, ku = mod["shared_basis"]
            r_all = sum(mod["task_ranks"][:n])
            stored = kv * (mod["in"] + r_all) + ku * (mod["out"] + r_all) + sum(added) * (mod["in"] + mod["out"])
            worst_storage = max(worst_storage, abs(stored / raw - mod["storage_ratio"]))
            continue
        if kind == "rank":
            recon, delta = check_truncations(path, "factors", mod["kept_ranks"], tensors, adapters[:n],
                                             mod["delta_error"][:n])
            worst_recon, worst_delta = max(worst_recon, recon), max(worst_delta, delta)
            stored = (sum(mod["kept_ranks"]) + sum(added)) * (mod["in"] + mod["out"])
            worst_storage = max(worst_storage, abs(stored / raw - mod["storage_ratio"]))
            continue
        # Version 1: the bundle's one P; version 2: a P per side (0: the mean alone).
        p_side = {"lora_A": mod.get("basis_a", manifest["basis"]), "lora_B": mod.get("basis_b", manifest["basis"])}
        stacks = {}
        for side, m in (("lora_A", mod["in"]), ("lora_B", mod["out"])):
            p = p_side[side]
            x = np.zeros((m, r, n))
            for i, ad in enumerate(adapters[:n]):
                a, b = ad[path]
                if side == "lora_A":
                    x[:, : a.shape[0], i] = a.T       # column j of A_i
                else:
                    x[:, : b.shape[1], i] = b         # row j of B_i
            ref = rmm_projection(x, p)
            got = bundle_positions(tensors, path, side, n)
            scale = max(np.abs(x).max(), 1e-30)
            worst_recon = max(worst_recon, float(np.abs(got - ref).max() / scale))
            stacks[side] = (x, got)
        for i in range(n):
            a, bh = stacks["lora_A"][0][:, :, i].T, stacks["lora_B"][0][:, :, i]
            ah, bhh = stacks["lora_A"][1][:, :, i].T, stacks["lora_B"][1][:, :, i]
            orig = bh @ a
            err = np.linalg.norm(bhh @ ah - orig) / max(np.linalg.norm(orig), 1e-300)
            # Relative where the error is sizeable; below 1e-3 it is f32 rounding, compared absolutely.
            worst_delta = max(worst_delta, abs(err - mod["delta_error"][i]) / max(err, 1e-3))
        stored = ((p_side["lora_A"] * (r + n) + r) * mod["in"] + (p_side["lora_B"] * (r + n) + r) * mod["out"]
                  + sum(added) * (mod["in"] + mod["out"]))
        expected_storage = stored / raw
        worst_storage = max(worst_storage, abs(expected_storage - mod["storage_ratio"]))
    seconds = time.perf_counter() - t0
    what = ", ".join(f"{c} {k}" for k, c in sorted(kinds.items()))
    print(f"numpy cross-check of {args.bundle}: {len(manifest['modules'])} modules ({what}), {n_all} tasks, "
          f"{seconds:.3f} s")
    print(f"  largest relative difference, reconstructed factors: {worst_recon:.3e}")
    print(f"  largest relative difference, delta errors:          {worst_delta:.3e}  (absolute/1e-3 below 1e-3)")
    print(f"  largest difference, storage ratios:                 {worst_storage:.3e}")
    ok = worst_recon <= args.tol and worst_delta <= 10 * args.tol and worst_storage <= 1e-12
    print("  agree" if ok else f"  DISAGREE (tolerance {args.tol})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
