#!/usr/bin/env python3
"""`revmerge compress` against `mergekit-extract-lora` on the same base and fine-tune, in one run:
wall time, peak resident memory and each adapter's error against the exact rank-R truncation,
beside the read floor (both models' bytes read once from the page cache, measured here).

    python3 bench/extract_lora_bench.py --revmerge build/release/host/cli/revmerge \\
        [--shape mid|llama-7b] [--layers 2] [--rank 32] [--repeats 3] [--threads N] \\
        [--work DIR] [--cuda] [--mergekit-pkg DIR] [--json OUT]

The models: a Llama-shaped base (`mid`: hidden 2048, intermediate 5632, 4 KV heads of 64, the
shape of the 1B class; `llama-7b`: 4096 / 11008 / 32 heads) with --layers blocks, in bf16, and one
fine-tune whose every linear module moved by a delta with a decaying spectrum (200 directions,
σ_i ∝ 0.97^i) plus noise, so a rank-32 adapter keeps most but not all of it. Both tools get the
same thread count and write bf16 factors of the linear modules of the blocks (mergekit with
`-e embed_tokens -e lm_head -e norm`, which keeps it from saving those at full rank; revmerge
compresses only those modules). mergekit 0.1.5 is installed from PyPI into WORK/mergekit-pkg.

mergekit computes each module's full SVD (`torch.linalg.svd`, f32) of the delta taken in the
files' dtype (bf16); revmerge a randomized truncated SVD of the delta in f64 (docs/methods.md).
The errors: ‖Δ − BA‖_F / ‖Δ‖_F over all modules, Δ the exact difference of the two files, beside
the exact truncation's (from Δ's singular values, computed once per model set and kept in WORK).
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mergekit_bench import bf16_bytes, install_mergekit, timed, write_safetensors  # noqa: E402

SHAPES = {  # hidden, intermediate, attention heads, key-value heads
    "mid": (2048, 5632, 32, 4),
    "llama-7b": (4096, 11008, 32, 32),
}
LINEAR = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def linear_shapes(shape: str):
    hidden, inter, heads, kv = SHAPES[shape]
    kv_dim = hidden // heads * kv
    return {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv_dim, hidden),
            "self_attn.v_proj": (kv_dim, hidden), "self_attn.o_proj": (hidden, hidden),
            "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}


def bf16_values(a: np.ndarray) -> np.ndarray:
    """What a bf16 file holds for `a`, as float32."""
    return (np.frombuffer(bf16_bytes(a), np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(a.shape)


def write_models(root: Path, shape: str, layers: int, vocab: int):
    hidden, inter, heads, kv = SHAPES[shape]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv, "vocab_size": vocab, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 4096, "torch_dtype": "bfloat16", "tie_word_embeddings": False}
    base, ft = {}, {}
    for name, sh in [("model.embed_tokens.weight", (vocab, hidden)), ("model.norm.weight", (hidden,)),
                     ("lm_head.weight", (vocab, hidden))]:
        w = np.ones(sh, np.float32) if len(sh) == 1 else \
            np.random.default_rng([0, zlib.crc32(name.encode())]).standard_normal(sh, np.float32) * 0.02
        base[name] = ft[name] = (sh, bf16_bytes(w))
    for i in range(layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            name = f"model.layers.{i}.{norm}.weight"
            base[name] = ft[name] = ((hidden,), bf16_bytes(np.ones(hidden, np.float32)))
        for module, (rows, cols) in linear_shapes(shape).items():
            name = f"model.layers.{i}.{module}.weight"
            rng = np.random.default_rng([1, zlib.crc32(name.encode())])
            w = rng.standard_normal((rows, cols), np.float32) * 0.02
            k = 200
            u = rng.standard_normal((rows, k), np.float32) / np.sqrt(rows)
            v = rng.standard_normal((k, cols), np.float32) / np.sqrt(cols)
            s = (0.97 ** np.arange(k)).astype(np.float32) * 0.02 * np.sqrt(min(rows, cols))
            d = (u * s) @ v + 2e-4 * rng.standard_normal((rows, cols), np.float32)
            base[name] = ((rows, cols), bf16_bytes(w))
            ft[name] = ((rows, cols), bf16_bytes(w + d))
    for folder, tensors in (("base", base), ("ft", ft)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_safetensors(root / folder / "model.safetensors", tensors)
        (root / folder / "config.json").write_text(json.dumps(config, indent=1))


def exact_deltas(root: Path):
    """Every linear module's Δ as the files hold it (ft − base of the bf16 values, exact in f32)."""
    import torch  # safetensors' numpy loader has no bf16
    from safetensors.torch import load_file
    base = load_file(str(root / "base" / "model.safetensors"))
    ft = load_file(str(root / "ft" / "model.safetensors"))
    for name in sorted(base):
        if any(f".{m}." in name for m in LINEAR):
            yield name.removesuffix(".weight"), ft[name].to(torch.float64) - base[name].to(torch.float64)


def truncation_floor(root: Path, rank: int):
    """Per module: ‖Δ‖² and the exact rank-`rank` truncation's squared error (Σ_{i>rank} σ_i²), cached."""
    cache = root / f"truncation-r{rank}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    import torch
    out = {}
    for name, d in exact_deltas(root):
        s = torch.linalg.svdvals(d.to(torch.float32)).to(torch.float64)
        total = float((d * d).sum())
        out[name] = {"norm_sq": total, "err_sq": max(total - float((s[:rank] ** 2).sum()), 0.0)}
    cache.write_text(json.dumps(out, indent=1))
    return out


def adapter_error(root: Path, adapter: Path):
    """Σ‖Δ − BA‖² over the modules, and the names of modules the adapter lacks."""
    import torch
    from safetensors.torch import load_file
    files = sorted(adapter.glob("*.safetensors"))
    t = {}
    for f in files:
        t.update(load_file(str(f)))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    total, missing = 0.0, []
    for name, d in exact_deltas(root):
        a, b = t.get(f"base_model.model.{name}.lora_A.weight"), t.get(f"base_model.model.{name}.lora_B.weight")
        if a is None or b is None:
            missing.append(name)
            total += float((d * d).sum())
            continue
        scale = cfg["lora_alpha"] / cfg["r"]  # every module at the one rank here (no patterns)
        r = d - scale * (b.to(torch.float64) @ a.to(torch.float64))
        total += float((r * r).sum())
    return total, missing


def read_floor(root: Path) -> tuple[float, int]:
    """Seconds to read the bytes both tools need (every linear module of both models) from the
    page cache, warm, and how many bytes that is."""
    ranges = []
    for model in ("base", "ft"):
        path = root / model / "model.safetensors"
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        ranges += [(path, 8 + size + t["data_offsets"][0], t["data_offsets"][1] - t["data_offsets"][0])
                   for name, t in header.items() if any(f".{m}." in name for m in LINEAR)]
    total = sum(r[2] for r in ranges)
    for _ in range(2):  # the second pass is the one measured: the page cache is warm
        t0 = time.perf_counter()
        for path, at, length in ranges:
            with open(path, "rb", buffering=0) as f:
                f.seek(at)
                while length > 0:
                    length -= len(f.read(min(length, 64 << 20)))
        took = time.perf_counter() - t0
    return took, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--revmerge", required=True)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="mid")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", type=Path, default=Path("/tmp/revmerge-extract-bench"))
    ap.add_argument("--cuda", action="store_true", help="mergekit --cuda against revmerge --device cuda")
    ap.add_argument("--mergekit-pkg", type=Path, help="mergekit already installed (pip --target) there: "
                    "no install (a machine without network)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    root = a.work / f"{a.shape}-{a.layers}l-v{a.vocab}"
    if not (root / "ft" / "model.safetensors").exists():
        print(f"writing the models to {root} ...", flush=True)
        write_models(root, a.shape, a.layers, a.vocab)
        # Again in a fresh process: the children's peak resident memory would count this one's
        # (a fork shares the parent's pages), grown by the models just written.
        os.execv(sys.executable, [sys.executable, *sys.argv])
    pkg = a.mergekit_pkg or install_mergekit(a.work)
    env = dict(os.environ, PYTHONPATH=str(pkg) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    read_s, total = read_floor(root)
    device = "cuda" if a.cuda else "cpu"
    print(f"inputs: base + fine-tune, {a.layers} {a.shape} blocks, bf16, {total / 1e9:.2f} GB of linear "
          f"weights; read floor {read_s:.3f} s; rank {a.rank}; threads {a.threads}; {device}; {a.repeats} runs "
          f"each, medians", flush=True)
    out = {tool: a.work / f"out-{tool}" for tool in ("mergekit", "revmerge")}
    cmds = {
        "mergekit": [sys.executable, "-c", "import sys; from mergekit.scripts.extract_lora import main; "
                     "sys.argv[0] = 'mergekit-extract-lora'; main()", "--model", root / "ft", "--base-model",
                     root / "base", "--out-path", out["mergekit"], "--max-rank", a.rank, "--num-threads",
                     a.threads, "-e", "embed_tokens", "-e", "lm_head", "-e", "norm"] + (["--cuda"] if a.cuda else []),
        "revmerge": [a.revmerge, "compress", "--base", root / "base", "--model", root / "ft", "--rank", a.rank,
                     "--out", out["revmerge"], "--dtype", "bf16", "--threads", a.threads, "--device", device, "-q"],
    }
    # Timed first, while this process is small (a child's peak resident memory counts what it
    # shares with its parent at the fork); the last run's adapters are kept for the errors.
    times, peaks = {t: [] for t in cmds}, {t: [] for t in cmds}
    for i in range(a.repeats):
        for tool, cmd in cmds.items():
            shutil.rmtree(out[tool], ignore_errors=True)
            took, peak = timed(cmd, env)
            times[tool].append(took)
            peaks[tool].append(peak)
    floor = truncation_floor(root, a.rank)
    norm_sq = sum(m["norm_sq"] for m in floor.values())
    exact = (sum(m["err_sq"] for m in floor.values()) / norm_sq) ** 0.5
    rows = {}
    for tool in cmds:
        err_sq, missing = adapter_error(root, out[tool])
        if missing:
            raise SystemExit(f"{tool}'s adapter lacks {len(missing)} modules, e.g. {missing[0]}")
        err = (err_sq / norm_sq) ** 0.5
        rows[tool] = {"seconds": statistics.median(times[tool]), "runs": times[tool], "peak_rss": max(peaks[tool]),
                      "relative_error": err, "error_over_exact": err / exact}
        shutil.rmtree(out[tool], ignore_errors=True)
    for tool, r in rows.items():
        print(f"{tool:9} {r['seconds']:8.2f} s  {r['peak_rss'] / 2**30:5.2f} GiB  error {r['relative_error']:.5f} "
              f"({r['error_over_exact']:.4f}× the exact truncation's {exact:.5f})  {r['seconds'] / read_s:7.1f}× "
              f"the read floor")
    speedup = rows["mergekit"]["seconds"] / rows["revmerge"]["seconds"]
    print(f"revmerge {speedup:.1f}× faster than mergekit-extract-lora")
    if a.json:
        a.json.write_text(json.dumps({"shape": a.shape, "layers": a.layers, "rank": a.rank, "bytes": total,
                                      "floor_s": read_s, "threads": a.threads, "device": device,
                                      "exact_error": exact, "speedup": speedup, "tools": rows}, indent=1))


if __name__ == "__main__":
    main()
