#!/usr/bin/env python3
"""RMM over full fine-tunes, file to file: `revmerge merge --base BASE --rank R FT...` (each
module's task deltas compressed as the pipeline reads them, the base read once per module)
against the two-step way it replaces (`revmerge compress` of each fine-tune, then `revmerge
merge` of the adapters), on the same files, side by side in one run, beside the floor (the time
to read the base and the fine-tunes once). On the CPU the two bundles must be bitwise identical.

    python3 bench/full_merge_bench.py --revmerge build/release/host/cli/revmerge \
        [--model llama-7b] [--tasks 3] [--rank 64] [--basis 2] [--work DIR] [--device cpu] [--json OUT]

One transformer layer of the chosen shape (f32): a base and n fine-tunes whose deltas have a
decaying spectrum plus noise (bench/compress_bench.py's recipe, one seed per task). --work keeps
the models between runs.
"""
import argparse
import filecmp
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from compress_bench import modules


def write_models(root: Path, model: str, tasks: int):
    """The base and `tasks` fine-tunes, each a folder with config.json and model.safetensors."""
    rng = np.random.default_rng(0)
    base = {f"model.layers.0.{name}.weight": rng.standard_normal(shape, dtype=np.float32) * 0.02
            for name, shape in modules(model).items()}
    folders = {"base": base}
    for t in range(tasks):
        rng = np.random.default_rng(100 + t)
        ft = {}
        for key, w in base.items():
            (out, inp), k = w.shape, 96
            u = rng.standard_normal((out, k), dtype=np.float32)
            v = rng.standard_normal((k, inp), dtype=np.float32)
            s = (0.9 ** np.arange(k)).astype(np.float32) * 1e-3
            ft[key] = w + (u * s) @ v + 1e-5 * rng.standard_normal((out, inp), dtype=np.float32)
        folders[f"ft{t}"] = ft
    for name, tensors in folders.items():
        (root / name).mkdir(parents=True)
        save_file(tensors, str(root / name / "model.safetensors"))
        (root / name / "config.json").write_text(json.dumps({"model_type": "llama"}))


def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--revmerge", required=True)
    ap.add_argument("--model", default="llama-7b", choices=["tiny", "llama-7b", "llama-70b"])
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--basis", type=int, default=2)
    ap.add_argument("--work", type=Path, help="keep the models here between runs")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where both ways run (on a GPU the bundles agree to rounding, not bitwise)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="revmerge-full-merge-bench-"))
    models = work / f"{args.model}-n{args.tasks}"
    out = Path(tempfile.mkdtemp(prefix="revmerge-full-merge-out-", dir=work.parent if args.work else None))
    try:
        if not (models / "base" / "model.safetensors").exists():
            shutil.rmtree(models, ignore_errors=True)
            write_models(models, args.model, args.tasks)
        fts = [models / f"ft{t}" for t in range(args.tasks)]
        files = [models / "base" / "model.safetensors"] + [f / "model.safetensors" for f in fts]
        t0 = time.perf_counter()
        for f in files:
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass
        floor = time.perf_counter() - t0
        nbytes = sum(f.stat().st_size for f in files)

        rm = args.revmerge
        dev = ["--device", args.device]
        streamed = timed([rm, "merge", *dev, "--basis", args.basis, "--base", models / "base", "--rank",
                          args.rank, "--quiet", "--out", out / "streamed", *fts])
        steps = []
        for t, ft in enumerate(fts):
            steps.append(timed([rm, "compress", *dev, "--base", models / "base", "--model", ft, "--rank",
                                args.rank, "--out", out / f"ft{t}"]))
        steps.append(timed([rm, "merge", *dev, "--basis", args.basis, "--quiet", "--out", out / "two-step",
                            *[out / f"ft{t}" for t in range(args.tasks)]]))
        same = filecmp.cmp(out / "streamed" / "bundle.safetensors",
                           out / "two-step" / "bundle.safetensors", shallow=False)
        result = {"model": args.model, "device": args.device, "tasks": args.tasks, "rank": args.rank, "basis": args.basis,
                  "bytes": nbytes, "read_floor_s": floor, "streamed_s": streamed,
                  "two_step_s": sum(steps), "two_step_parts_s": steps,
                  "speedup": sum(steps) / streamed, "bundles_identical": same}
        print(f"{args.model} layer, {args.tasks} fine-tunes, rank {args.rank}, P = {args.basis}: "
              f"streamed merge {streamed:.2f} s | compress each + merge {sum(steps):.2f} s "
              f"({sum(steps) / streamed:.2f}x) | read floor {floor:.2f} s for {nbytes / 1e9:.2f} GB | "
              f"bundles {'bitwise identical' if same else 'DIFFER'}")
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        if not same and args.device == "cpu":
            raise SystemExit("the streamed and the two-step bundles differ")
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
