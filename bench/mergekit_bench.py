#!/usr/bin/env python3
"""revmerge against mergekit on the same full-model files, in one run: TIES, DARE-TIES, SLERP and
task arithmetic by default (also arcee_fusion, della, karcher, multislerp, model_stock and sce,
with --methods) from one mergekit YAML config each, run by `mergekit-yaml` (mergekit 0.1.5,
installed from PyPI into WORK/mergekit-pkg by this script) and by `revmerge merge --config`,
beside the read floor (the inputs' bytes read once from the page cache on the runs' thread
count, measured here).

    python3 bench/mergekit_bench.py --revmerge build/release/host/cli/revmerge \\
        [--layers 2] [--vocab 32000] [--repeats 3] [--threads N] [--work DIR] [--cuda] \\
        [--mergekit-pkg DIR] [--settle S] [--memory-budget 1.5GiB] [--json OUT]

The models: a llama-7b-shaped base (hidden 4096, intermediate 11008, 32 heads) with --layers
blocks, the embedding and the head, in bf16, and three fine-tunes (base + a small random delta
sharing a common part, one seed each). --work keeps them between runs. Each merge writes bf16.
Both tools get the same thread count (mergekit: --num-threads; revmerge: --threads). DARE's mask
differs between the tools (torch's Bernoulli against revmerge's counter-based one): the same
work, not the same bytes. Times are wall-clock medians of --repeats runs, outputs removed (and the
machine let settle: `sync`, 10 s, and the inputs read once into the page cache; untimed) between;
peak resident memory (the most of any run, from the kernel's accounting of each process) beside
them. --memory-budget passes revmerge's.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HIDDEN, INTER, HEADS, KV_HEADS = 4096, 11008, 32, 32
MERGEKIT = "mergekit==0.1.5"
# mergekit's own dependencies the project's .venv does not already hold (it has torch,
# transformers, peft, safetensors, accelerate, pydantic, click, scipy, tqdm, yaml).
MERGEKIT_EXTRAS = ["immutables==0.21", "sentencepiece==0.2.3", "protobuf==7.36.2"]


def bf16_bytes(a: np.ndarray) -> bytes:
    """float32 → bfloat16 (round to nearest even), as raw little-endian bytes."""
    u = a.astype(np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).tobytes()


def write_safetensors(path: Path, tensors: dict):
    header, offset, blobs = {}, 0, []
    for name, (shape, blob) in tensors.items():
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for b in blobs:
            f.write(b)


def shapes(layers: int, vocab: int):
    out = {"model.embed_tokens.weight": (vocab, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
                    p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
                    p + "self_attn.v_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                    p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
                    p + "mlp.down_proj.weight": (HIDDEN, INTER)})
    out.update({"model.norm.weight": (HIDDEN,), "lm_head.weight": (vocab, HIDDEN)})
    return out


MODELS = [("base", 0), ("ft0", 1), ("ft1", 2), ("ft2", 3)]


def tensor_blocks(name: str, shape, block_elements: int):
    """The four models' values of tensor `name`, a block of whole rows at a time: (first element,
    [base, ft0, ft1, ft2] as float32). The base is N(0, 0.02²) (ones for a norm), each fine-tune
    the base plus 1e-3 · (0.7 · shared + own), every part drawn from a generator seeded by the
    tensor's name. A generator's consecutive draws continue its stream, so the blocks hold the
    values one whole-tensor draw would give; the base and the shared part are drawn once for
    all four models."""
    seed = zlib.crc32(name.encode())
    rows, cols = (shape[0], int(np.prod(shape[1:]))) if len(shape) > 1 else (1, shape[0])
    step = max(1, block_elements // cols)
    base_rng, shared_rng = np.random.default_rng([0, seed]), np.random.default_rng([7, seed])
    own_rngs = [np.random.default_rng([s, seed]) for _, s in MODELS[1:]]
    for r0 in range(0, rows, step):
        part = (min(step, rows - r0), cols)
        base = np.ones(part, np.float32) if len(shape) == 1 else base_rng.standard_normal(part, np.float32) * 0.02
        shared = shared_rng.standard_normal(part, np.float32)
        yield r0 * cols, [base] + [base + 1e-3 * (0.7 * shared + g.standard_normal(part, np.float32))
                                   for g in own_rngs]


def write_models(root: Path, layers: int, vocab: int, threads: int = os.cpu_count() or 1,
                 block_elements: int = 1 << 22):
    """The four models' safetensors files and configs under `root`. Tensors are made on `threads`
    threads (numpy's generators and ufuncs let go of the GIL while they fill) and each block is
    written at its own offset in every file, so the bytes do not depend on the order the threads
    finish in; only a few blocks a thread are held at once (the 2-layer set used to take ~5 min
    on one thread, the base drawn again for every model)."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": HEADS,
              "num_key_value_heads": KV_HEADS, "vocab_size": vocab, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}
    sh = shapes(layers, vocab)
    header, offset = {}, 0
    for name, shape in sh.items():
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    data = 8 + len(text)
    fds = []
    try:
        for model, _ in MODELS:
            folder = root / model
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / "model.safetensors", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fds.append(fd)
            os.pwrite(fd, len(text).to_bytes(8, "little") + text, 0)
            os.ftruncate(fd, data + offset)

        def one(name: str):
            for first, values in tensor_blocks(name, sh[name], block_elements):
                at = data + header[name]["data_offsets"][0] + 2 * first
                for fd, v in zip(fds, values):
                    os.pwrite(fd, bf16_bytes(v), at)

        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(one, sorted(sh, key=lambda n: -int(np.prod(sh[n])))))  # the largest first
    finally:
        for fd in fds:
            os.close(fd)
    for model, _ in MODELS:
        (root / model / "config.json").write_text(json.dumps(config, indent=1))


CONFIGS = {
    "ties": {"merge_method": "ties", "params": lambda i: {"weight": [1.0, 0.7, 0.5][i], "density": 0.3}},
    "dare_ties": {"merge_method": "dare_ties", "params": lambda i: {"weight": [1.0, 0.7, 0.5][i], "density": 0.5}},
    "task_arithmetic": {"merge_method": "task_arithmetic", "params": lambda i: {"weight": [1.0, 0.5, 0.5][i]}},
    "slerp": {"merge_method": "slerp", "models": 1, "parameters": {"t": 0.4}},
    "arcee_fusion": {"merge_method": "arcee_fusion", "models": 1},
    "della": {"merge_method": "della", "params": lambda i: {"weight": [1.0, 0.5, 0.5][i], "density": 0.5,
                                                              "epsilon": 0.1},
              "parameters": {"lambda": 1.0}},
    # Every model, the base too, for the full 10 iterations (tol far below where they converge).
    "karcher": {"merge_method": "karcher", "parameters": {"max_iter": 10, "tol": 1e-9}},
    "multislerp": {"merge_method": "multislerp", "params": lambda i: {"weight": [1.0, 0.5, 0.5][i]}},
    "model_stock": {"merge_method": "model_stock"},
    "sce": {"merge_method": "sce", "parameters": {"select_topk": 0.3}},
}


def write_config(root: Path, method: str) -> Path:
    spec = CONFIGS[method]
    models = [{"model": str(root / f"ft{i}")} | ({"parameters": spec["params"](i)} if "params" in spec else {})
              for i in range(spec.get("models", 3))]
    text = "\n".join([f"merge_method: {spec['merge_method']}", f"base_model: {root / 'base'}",
                      "dtype: bfloat16", "models:"] +
                     [f"  - {json.dumps(m)}" for m in models] +
                     ([f"parameters: {json.dumps(spec['parameters'])}"] if "parameters" in spec else []))
    path = root / f"{method}.yml"
    path.write_text(text + "\n")
    return path


def install_mergekit(work: Path) -> Path:
    target = work / "mergekit-pkg"
    if not (target / "mergekit").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                        str(target), MERGEKIT, *MERGEKIT_EXTRAS], check=True)
    return target


def input_files(root: Path) -> list[Path]:
    return [root / m / "model.safetensors" for m in ["base", "ft0", "ft1", "ft2"]]


def read_inputs(root: Path, threads: int = 1) -> float:
    """Reads every input once (the page cache's copy where it holds them) on `threads` threads,
    each into one buffer of its own used again and again (a fresh 64 MiB object a read pays for
    its pages: one thread of that ran at ~1.6 GB/s here, under what revmerge's reads reach, so
    it was no floor); the seconds it took."""
    extent = 8 << 20
    fds = [os.open(f, os.O_RDONLY) for f in input_files(root)]
    jobs = [(fd, at) for fd in fds for at in range(0, os.fstat(fd).st_size, extent)]
    buffers = {}

    def one(job):
        fd, at = job
        os.preadv(fd, [buffers.setdefault(threading.get_ident(), bytearray(extent))], at)

    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(one, jobs))
        return time.perf_counter() - t0
    finally:
        for fd in fds:
            os.close(fd)


def read_floor(root: Path, threads: int) -> tuple[float, int]:
    total = sum(f.stat().st_size for f in input_files(root))
    read_inputs(root, threads)
    return read_inputs(root, threads), total  # the second pass is the one measured: the page cache is warm


def settle(root: Path, seconds: float):
    """Lets the machine finish with the last run before the next is timed: the output's dirty
    pages written back and deleted, the memory the run freed given back. Measured on a 2-core VM
    whose freed memory goes back to its host: revmerge's task arithmetic in four runs 2 s apart,
    straight after a mergekit run had freed 7 GiB, took 2.87, 2.06, 1.86 and 1.44 s (its user
    time 3.8 s falling to 2.0 s); 10 s after, 1.80 s twice. Then the inputs are read once, so
    that every run starts from the same warm page cache: on that VM a mergekit run can leave
    part of them evicted (task arithmetic by hand after a bench: 6.89 s, then 2.38 and 2.55 s).
    Untimed, before every run of both."""
    os.sync()
    time.sleep(seconds)
    read_inputs(root, os.cpu_count() or 1)


def timed(cmd, env=None):
    """Wall seconds and peak resident bytes of one run (the child's own rusage, from wait4)."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: nothing blocks the child
        t0 = time.perf_counter()
        p = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        took = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            log.seek(0)
            raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{log.read()[-4000:].decode(errors='replace')}")
    return took, usage.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--revmerge", required=True)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--methods", default="ties,dare_ties,slerp,task_arithmetic")
    ap.add_argument("--work", type=Path, default=Path("/tmp/revmerge-mergekit-bench"))
    ap.add_argument("--cuda", action="store_true", help="mergekit --cuda against revmerge --device cuda")
    ap.add_argument("--memory-budget", help="revmerge's --memory-budget (e.g. 1.5GiB; default: its own)")
    ap.add_argument("--mergekit-pkg", type=Path, help="mergekit already installed (pip --target) there: "
                    "for a machine without PyPI (the GPU check carries it)")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds let pass before each timed run (default 10; see settle())")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    root = a.work / f"llama7b-{a.layers}l-v{a.vocab}"
    if not (root / "ft2" / "model.safetensors").exists():
        print(f"writing the models to {root} ...", flush=True)
        write_models(root, a.layers, a.vocab)
        # Again in a fresh process: a child's peak resident memory counts this process's at the
        # fork, grown by the models just written (the first run showed revmerge at 4.45 GiB).
        os.execv(sys.executable, [sys.executable, *sys.argv])
    pkg = a.mergekit_pkg or install_mergekit(a.work)
    env = dict(os.environ, PYTHONPATH=str(pkg) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    floor, total = read_floor(root, a.threads)
    print(f"inputs: 4 models × {a.layers} llama-7b layers + embedding and head (vocab {a.vocab}), bf16, "
          f"{total / 1e9:.2f} GB; read floor {floor:.2f} s ({total / floor / 1e9:.1f} GB/s from the page cache, "
          f"{a.threads} threads)")
    print(f"threads {a.threads}, {a.repeats} runs each, medians")
    out = a.work / "out"
    rows = []
    for method in a.methods.split(","):
        cfg = write_config(root, method)
        mk_cmd = [sys.executable, "-c", "import sys; from mergekit.scripts.run_yaml import main; "
                  "sys.argv[0] = 'mergekit-yaml'; main()", cfg, out, "--num-threads", a.threads,
                  "--no-copy-tokenizer"] + (["--cuda"] if a.cuda else [])
        rm_cmd = [a.revmerge, "merge", "--config", cfg, "--out", out, "--threads", a.threads, "-q"] + \
                 (["--device", "cuda"] if a.cuda else []) + \
                 (["--memory-budget", a.memory_budget] if a.memory_budget else [])
        times = {"mergekit": [], "revmerge": []}
        peaks = {"mergekit": [], "revmerge": []}
        for _ in range(a.repeats):
            for tool, cmd in [("mergekit", mk_cmd), ("revmerge", rm_cmd)]:
                shutil.rmtree(out, ignore_errors=True)
                settle(root, a.settle)
                took, peak = timed(cmd, env)
                times[tool].append(took)
                peaks[tool].append(peak)
        shutil.rmtree(out, ignore_errors=True)
        mk, rm = statistics.median(times["mergekit"]), statistics.median(times["revmerge"])
        mk_rss, rm_rss = max(peaks["mergekit"]), max(peaks["revmerge"])
        rows.append({"method": method, "mergekit_s": mk, "revmerge_s": rm, "speedup": mk / rm,
                     "revmerge_over_floor": rm / floor, "mergekit_peak_rss": mk_rss,
                     "revmerge_peak_rss": rm_rss, "runs": times})
        print(f"{method:16} mergekit {mk:7.2f} s {mk_rss / 2**30:5.2f} GiB   revmerge {rm:7.2f} s "
              f"{rm_rss / 2**30:5.2f} GiB   {mk / rm:5.1f}× faster   {rm / floor:5.1f}× the read floor",
              flush=True)
    if a.json:
        a.json.write_text(json.dumps({"layers": a.layers, "vocab": a.vocab, "bytes": total, "floor_s": floor,
                                      "threads": a.threads, "cuda": a.cuda, "memory_budget": a.memory_budget,
                                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
