#!/usr/bin/env python3
"""Classic merges of LLM-shaped LoRA adapters: revmerge against PEFT's add_weighted_adapter on
the same files, side by side in one run, beside the floor (the time to read the same bytes).

    python3 bench/classic_vs_peft.py --revmerge build/release/host/cli/revmerge \
        --make-adapters build/release/bench/revmerge_make_adapters [--model llama-7b] \
        [--tasks 8] [--rank 64] [--layers 1] [--repeats 3] [--json OUT]

PEFT runs on a model of the same shape built in code (the adapted layers only, a 32-token
vocabulary). Its loading of the adapters is timed once; each combination is timed from
add_weighted_adapter to the merged adapter written (save_pretrained). revmerge is timed file to
file (read, merge, write, fsync), so the fair ratio is PEFT (load + merge + save) / revmerge.
Needs torch, transformers and peft.
"""
import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

SHAPES = {  # hidden, intermediate, attention heads, kv heads
    "tiny": (64, 128, 4, 2),
    "llama-7b": (4096, 11008, 32, 32),
    "llama-13b": (5120, 13824, 40, 40),
}

# (label, revmerge arguments, PEFT combination_type, PEFT keyword arguments)
CASES = [
    ("task_arithmetic separate", ["--method", "linear"], "linear", {}),
    ("ties separate d=0.5", ["--method", "ties", "--density", "0.5"], "ties", {"density": 0.5}),
    ("dare_ties separate d=0.5", ["--method", "dare_ties", "--density", "0.5"], "dare_ties",
     {"density": 0.5}),
    ("cat", ["--method", "cat"], "cat", {}),
    ("svd (to the input rank)", ["--method", "svd"], "svd", {}),
]


def median_time(fn, repeats, single_above=60.0):
    """Median of `repeats` runs; one run when the first takes longer than `single_above` s."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if times[0] > single_above:
            break
    return statistics.median(times)


def read_floor(folders):
    """Seconds to read every adapter file once more (page cache warm, as the merges see it)."""
    def read_all():
        for f in folders:
            for p in f.glob("*.safetensors"):
                with open(p, "rb") as fh:
                    while fh.read(1 << 24):
                        pass
    return read_all


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--revmerge", required=True)
    ap.add_argument("--make-adapters", required=True)
    ap.add_argument("--model", default="llama-7b", choices=sorted(SHAPES))
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    work = Path(tempfile.mkdtemp(prefix="revmerge-classic-bench-"))
    try:
        subprocess.run([args.make_adapters, "--model", args.model, "--tasks", str(args.tasks),
                        "--rank", str(args.rank), "--layers", str(args.layers), "--dtype", "f32",
                        "--out", str(work / "adapters"), "--force"], check=True,
                       stdout=subprocess.DEVNULL)
        folders = sorted((work / "adapters").iterdir())
        total_bytes = sum(p.stat().st_size for f in folders for p in f.glob("*.safetensors"))
        floor = median_time(read_floor(folders), args.repeats)

        hidden, inter, heads, kv = SHAPES[args.model]
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=32, hidden_size=hidden, intermediate_size=inter,
                          num_hidden_layers=args.layers, num_attention_heads=heads,
                          num_key_value_heads=kv, max_position_embeddings=32)
        base = LlamaForCausalLM(cfg).eval()
        t0 = time.perf_counter()
        model = PeftModel.from_pretrained(base, str(folders[0]), adapter_name="t0")
        names = ["t0"]
        for i, f in enumerate(folders[1:], start=1):
            model.load_adapter(str(f), adapter_name=f"t{i}")
            names.append(f"t{i}")
        peft_load = time.perf_counter() - t0  # once: PEFT merges adapters already in memory
        threads = torch.get_num_threads()

        rows = []
        for label, rm_args, ctype, kwargs in CASES:
            out = work / "out"

            def run_revmerge():
                subprocess.run([args.revmerge, "merge", *rm_args, "--out", str(out), "--force",
                                "-q", *map(str, folders)], check=True)

            counter = [0]

            def run_peft():
                name = f"m{counter[0]}"
                counter[0] += 1
                model.add_weighted_adapter(names, [1.0] * len(names), name, combination_type=ctype,
                                           **kwargs)
                model.save_pretrained(str(work / "peft-out"), selected_adapters=[name])
                model.delete_adapter(name)

            ours = median_time(run_revmerge, args.repeats)
            peft = median_time(run_peft, args.repeats)
            rows.append({"case": label, "revmerge_s": ours, "peft_merge_save_s": peft,
                         "peft_load_s": peft_load, "peft_runs": 1 if peft > 60 else args.repeats,
                         "speedup_file_to_file": (peft + peft_load) / ours, "floor_s": floor})
            print(f"{label:<26} revmerge {ours:8.3f} s   PEFT merge+save {peft:8.3f} s "
                  f"(+ load {peft_load:.3f} s)   file to file {(peft + peft_load) / ours:6.1f}x   "
                  f"read floor {floor:.3f} s", flush=True)
        result = {"model": args.model, "layers": args.layers, "tasks": args.tasks,
                  "rank": args.rank, "adapter_bytes": total_bytes, "torch_threads": threads,
                  "repeats": args.repeats, "rows": rows}
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
