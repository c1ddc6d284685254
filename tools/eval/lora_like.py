#!/usr/bin/env python3
"""LoRA-like synthetic adapters: n tasks fine-tuned from one initialisation, the setting where a
basis shared across tasks pays. Per module every task's A is the shared init moved by 15 %, and
its B is half a shared part, half its own: with `--b-shared mix` (the default) every column is
the mean of a shared column and the task's own; with `--b-shared columns` the first half of the
columns are shared and the rest the task's own (tasks 1024², rank 16, 2 layers of q_proj /
v_proj by default). Writes PEFT adapter folders OUT/t0 … OUT/t{n-1}; needs numpy and safetensors.

    python3 tools/eval/lora_like.py --out /tmp/lora-like
    revmerge compare --device cpu --methods ties --basis 1,2,4 /tmp/lora-like/*
"""
import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--b-shared", choices=("mix", "columns"), default="mix",
                    help="how B is half shared: every column mixed, or half the columns shared")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    r, d = args.rank, args.dim
    modules = [f"model.layers.{l}.self_attn.{m}" for l in range(args.layers) for m in ("q_proj", "v_proj")]
    a_init = {m: rng.standard_normal((r, d)) / np.sqrt(d) for m in modules}
    b_shared = {m: rng.standard_normal((d, r)) for m in modules}
    for t in range(args.tasks):
        tensors = {}
        for m in modules:
            a = a_init[m] + 0.15 * rng.standard_normal((r, d)) / np.sqrt(d)
            if args.b_shared == "mix":
                b = 0.5 * b_shared[m] + 0.5 * rng.standard_normal((d, r))
            else:
                b = np.concatenate([b_shared[m][:, : r // 2], rng.standard_normal((d, r - r // 2))], axis=1)
            tensors[f"base_model.model.{m}.lora_A.weight"] = a.astype(np.float32)
            tensors[f"base_model.model.{m}.lora_B.weight"] = b.astype(np.float32)
        folder = args.out / f"t{t}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": r, "lora_alpha": r, "target_modules": ["q_proj", "v_proj"]}))
    print(f"wrote {args.tasks} LoRA-like adapters under {args.out}")


if __name__ == "__main__":
    main()
