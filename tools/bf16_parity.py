#!/usr/bin/env python3
"""bf16 checkpoints, revmerge against mergekit (tests/cli/mergekit_golden.sh). Two claims:

  ties REVMERGE_OUT MERGEKIT_OUT BF16_DIR DENSITY
      mergekit computing in f32 (`dtype: float32`, `out_dtype: bfloat16`) and revmerge write the
      same bf16 values except where TIES' trim meets a tie: bf16 magnitudes repeat, mergekit's
      argsort orders equal ones arbitrarily and revmerge keeps the lower index. At most 0.5 % of
      the elements may differ, and every one that does must sit on a tie at some task's trim
      threshold (its |δ| equal to that task's k-th largest, k = max(1, ⌊density · numel⌋)).

  closer REVMERGE_OUT MERGEKIT_BF16_OUT BF16_DIR W1,W2,W3
      task arithmetic with `dtype: bfloat16`: mergekit computes in bf16; revmerge computes in
      f32 / f64 whatever `dtype` says and rounds once. Against the merge computed here in f64
      (base + Σ wᵢ (ftᵢ − base)), revmerge's output must be within half a bf16 step of every
      value (one rounding) and at least as close as mergekit's, tensor by tensor.

  lora REVMERGE_OUT MERGEKIT_OUT GOLDEN_DIR
      task arithmetic of bf16/base+lora/b (weight 1) and bf16/ft1 (0.5) over bf16/base, written
      in bf16 (task_arithmetic_lora_bf16.yml). mergekit merges the adapter into the model in f32
      and stores that model in bf16 before the merge reads it; revmerge keeps the adapted tensors
      in f32. revmerge's output must be the exact merge rounded once, everywhere; mergekit's must
      be exactly that merge with the intermediate bf16 rounding (so the two differ only by it).
"""
import json
import glob
import sys

import numpy as np
import torch
from safetensors.torch import load_file


def tensors(folder):
    out = {}
    for f in sorted(glob.glob(f"{folder}/*.safetensors")):
        out.update(load_file(f))
    return {k: v.float().numpy().astype(np.float64) for k, v in out.items()}


def ties(ours, theirs, bf16, density):
    a, b, base = tensors(ours), tensors(theirs), tensors(f"{bf16}/base")
    fts = [tensors(f"{bf16}/ft{i}") for i in range(3)]
    total = differ = unexplained = 0
    for name, x in a.items():
        y = b[name]
        diff = np.flatnonzero(x.ravel() != y.ravel())
        total += x.size
        differ += diff.size
        if not diff.size:
            continue
        deltas = [(ft[name] - base[name]).ravel() for ft in fts]
        k = max(1, int(density * x.size))
        thresholds = [np.sort(np.abs(d))[::-1][k - 1] for d in deltas]
        for j in diff:
            if not any(abs(d[j]) == t for d, t in zip(deltas, thresholds)):
                unexplained += 1
    share = differ / total
    print(f"ties in bf16: {differ} of {total} elements differ ({share:.3%}), all at trim ties"
          if not unexplained else f"ties in bf16: {unexplained} differing elements are not at a trim tie")
    assert unexplained == 0 and share <= 0.005


def closer(ours, theirs, bf16, weights):
    a, b, base = tensors(ours), tensors(theirs), tensors(f"{bf16}/base")
    fts = [tensors(f"{bf16}/ft{i}") for i in range(3)]
    worst_ours = worst_theirs = 0.0
    for name, z in base.items():
        x = z + sum(w * (ft[name] - z) for w, ft in zip(weights, fts))
        scale = max(np.abs(x).max(), 1e-30)
        # one rounding to bf16: within half a step (8 bits of mantissa) of the exact value
        assert np.all(np.abs(a[name] - x) <= np.abs(x) * 2.0**-8 + 1e-30), f"{name}: more than one rounding"
        d_ours = np.abs(a[name] - x).max() / scale
        d_theirs = np.abs(b[name] - x).max() / scale
        assert d_ours <= d_theirs, f"{name}: revmerge {d_ours:.3g} from the exact merge, mergekit {d_theirs:.3g}"
        worst_ours, worst_theirs = max(worst_ours, d_ours), max(worst_theirs, d_theirs)
    print(f"bf16 compute: revmerge within {worst_ours:.2g}, mergekit within {worst_theirs:.2g} "
          "of the exact merge (largest difference ÷ the tensor's largest value)")


def lora(ours, theirs, golden):
    a, b = tensors(ours), tensors(theirs)
    base, ft1 = tensors(f"{golden}/bf16/base"), tensors(f"{golden}/bf16/ft1")
    factors = tensors(f"{golden}/lora/b")
    config = json.load(open(f"{golden}/lora/b/adapter_config.json"))
    scale = config["lora_alpha"] / (config["r"] ** 0.5 if config["use_rslora"] else config["r"])
    bf16 = lambda v: torch.from_numpy(v).to(torch.bfloat16).double().numpy()
    adapted = differ = 0
    for name, z in base.items():
        module = "base_model.model." + name.removesuffix(".weight")
        delta = np.zeros_like(z)
        if module + ".lora_A.weight" in factors:
            delta = scale * factors[module + ".lora_B.weight"] @ factors[module + ".lora_A.weight"]
            adapted += 1
        exact = z + delta + 0.5 * (ft1[name] - z)
        assert np.array_equal(a[name], bf16(exact)), f"{name}: revmerge is not the exact merge rounded once"
        # mergekit's: the merged model rounded to bf16 (f32 arithmetic), then task arithmetic in f32
        f32 = lambda v: v.astype(np.float32)
        merged_model = bf16((f32(z) + f32(delta)).astype(np.float64))
        theirs_expected = f32(z) + (f32(merged_model) - f32(z)) + np.float32(0.5) * (f32(ft1[name]) - f32(z))
        assert np.array_equal(b[name], bf16(theirs_expected.astype(np.float64))), \
            f"{name}: mergekit's output is not explained by its bf16 copy of the merged model"
        differ += int(np.count_nonzero(a[name] != b[name]))
    assert adapted > 0, "no tensor of the model is adapted by lora/b"
    print(f"MODEL+LORA in bf16: revmerge the exact merge rounded once; mergekit differs in {differ} "
          f"elements, each explained by its bf16 copy of the merged model ({adapted} adapted tensors)")


if __name__ == "__main__":
    if sys.argv[1] == "lora":
        lora(sys.argv[2], sys.argv[3], sys.argv[4])
        sys.exit(0)
    if sys.argv[1] == "ties":
        ties(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        closer(sys.argv[2], sys.argv[3], sys.argv[4], [float(w) for w in sys.argv[5].split(",")])
