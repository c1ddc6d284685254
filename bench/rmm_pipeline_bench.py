#!/usr/bin/env python3
"""RMM end to end on LLM-shaped adapters: `revmerge bench` (streamed pipeline, its read floor,
peak memory) and the batched numpy peer (tools/rmm_numpy_batched.py) on the same files, in one run.

    python3 bench/rmm_pipeline_bench.py --revmerge build/release/host/cli/revmerge \\
        --make-adapters build/release/bench/revmerge_make_adapters --model llama-7b \\
        --tasks 8 --rank 64 --basis 4 --memory-budget 1.5GiB --work /tmp/rmm-bench

The adapters are written once under --work (bf16, bench/make_adapters.cpp) and reused. Prints a
table and, with --json, one JSON object. --layers limits the layers written (default: all).
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--revmerge", required=True)
    ap.add_argument("--make-adapters", required=True)
    ap.add_argument("--model", default="llama-7b")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--basis", type=int, default=4)
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--memory-budget", default="1.5GiB")
    ap.add_argument("--work", default="/tmp/rmm-bench")
    ap.add_argument("--skip-numpy", action="store_true", help="only revmerge (e.g. for the 70b shape)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    folder = Path(args.work) / f"{args.model}-n{args.tasks}-r{args.rank}-l{args.layers or 'all'}"
    tasks = [folder / f"task-{t}" for t in range(args.tasks)]
    if not all((t / "adapter_config.json").exists() for t in tasks):
        subprocess.run([args.make_adapters, "--model", args.model, "--tasks", str(args.tasks), "--rank",
                        str(args.rank), "--layers", str(args.layers), "--dtype", "bf16", "--out",
                        str(folder), "--force"], check=True, stdout=sys.stderr)

    out = subprocess.run([args.revmerge, "bench", "--basis", str(args.basis), "--memory-budget",
                          args.memory_budget, "--json", *map(str, tasks)],
                         check=True, capture_output=True, text=True)
    rm = json.loads(out.stdout)
    result = {"model": args.model, "tasks": args.tasks, "rank": args.rank, "basis": args.basis,
              "layers": rm["pipeline"]["layers"], "revmerge": rm}
    if not args.skip_numpy:
        t0 = time.perf_counter()
        peer = subprocess.run([sys.executable, str(ROOT / "tools" / "rmm_numpy_batched.py"), "--basis",
                               str(args.basis), "--out", str(Path(args.work) / "numpy.safetensors"),
                               *map(str, tasks)], check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        np_report = json.loads(peer.stdout.strip().splitlines()[-1])
        np_report["wall_seconds"] = wall
        np_report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        result["numpy"] = np_report
        result["revmerge_speedup_over_numpy"] = np_report["seconds"] / rm["pipeline"]["seconds"]
        (Path(args.work) / "numpy.safetensors").unlink(missing_ok=True)

    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    p = rm["pipeline"]
    gib = 2 ** 30
    print(f"{args.model}: {args.tasks} adapters, rank {args.rank}, {p['layers']} layers, P = {args.basis}; "
          f"{rm['backend']}")
    print(f"  revmerge end to end      {p['seconds']:8.2f} s   ({rm['end_to_end_over_slowest_stage']:.2f} x the "
          f"slowest stage; stages read {p['stage_seconds']['read']:.1f} s, compute "
          f"{p['stage_seconds']['compute']:.1f} s, write {p['stage_seconds']['write']:.1f} s)")
    print(f"  floor (read same bytes)  {rm['floor']['seconds']:8.2f} s   ({rm['floor']['gb_per_s']:.2f} GB/s)")
    print(f"  revmerge peak RSS        {rm['peak_rss_bytes'] / gib:8.2f} GiB (budget {p['host_budget'] / gib:.2f} GiB)")
    if "numpy" in result:
        n = result["numpy"]
        print(f"  numpy batched            {n['seconds']:8.2f} s   (peak RSS {n['peak_rss_bytes'] / gib:.2f} GiB)")
        print(f"  revmerge / numpy speed   {result['revmerge_speedup_over_numpy']:8.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
