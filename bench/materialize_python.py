#!/usr/bin/env python3
"""A task of a bundle brought into torch tensors from Python, three ways, beside the peer a
serving stack runs today (safetensors' load_file of the task's own adapter, page cache warm, every
tensor copied once), all in one run; medians of --repeats.

    PYTHONPATH=build/release/python python3 bench/materialize_python.py --bundle B --task task-3 \\
        --adapter /tmp/b7/task-3 [--device cpu|cuda] [--dtype bfloat16]

  state_dict      Bundle.state_dict(task, framework="torch"): one new allocation, DLPack views
  materialize     Bundle.materialize(task, tensors) into tensors allocated once before
  C++ only        the same materialize timed inside (no dict, no Python): the package's overhead is
                  the difference
"""
import argparse
import statistics
import time

import torch
from safetensors.torch import load_file

import revmerge


def median_seconds(fn, repeats, sync):
    fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--adapter", required=True, help="the task's own PEFT adapter folder (the peer's input)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    b = revmerge.Bundle(args.bundle, device=args.device)
    sd = b.state_dict(args.task, dtype=args.dtype, framework="torch")
    numbers = sum(v.numel() for v in sd.values())
    targets = {k: torch.empty_like(v) for k, v in sd.items()}
    del sd

    figures = {
        "state_dict": median_seconds(lambda: b.state_dict(args.task, dtype=args.dtype, framework="torch"),
                                     args.repeats, sync),
        "materialize": median_seconds(lambda: b.materialize(args.task, targets), args.repeats, sync),
    }
    path = f"{args.adapter}/adapter_model.safetensors"
    device = "cuda" if cuda else "cpu"
    figures["peer: load_file + copy"] = median_seconds(
        lambda: [v.to(device, copy=True) for v in load_file(path).values()], args.repeats, sync)
    print(f"{args.bundle} task {args.task}: {len(targets) // 2} modules, {numbers / 1e6:.1f} M numbers as "
          f"{args.dtype} on {b.device} ({b._b.backend}), OpenBLAS {revmerge.blas_kernels()}")
    for name, s in figures.items():
        print(f"  {name:<24} {s * 1e3:8.2f} ms")
    print(f"  materialize ÷ peer       {figures['materialize'] / figures['peer: load_file + copy']:8.2f}×")


if __name__ == "__main__":
    main()
