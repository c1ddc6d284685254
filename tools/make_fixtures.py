#!/usr/bin/env python3
"""Writes the test fixtures with the real tools: a tiny Llama built locally by transformers
(no downloads), PEFT LoRA adapters on it, and a sharded checkpoint. Next to each output it
writes `expected.json`, computed by PEFT / torch themselves, which the C++ tests compare with.

Run once (needs torch, transformers, peft, safetensors) and commit tests/fixtures/:
    python3 tools/make_fixtures.py tests/fixtures
"""
import argparse
import json
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

SEED = 1234


def tiny_llama(hidden=32, inter=48, layers=2, heads=4, kv_heads=2, vocab=64):
    torch.manual_seed(SEED)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def lora_expectations(peft_model):
    """Per module: what PEFT itself says (rank, shapes, scaling) and the delta it applies."""
    modules = {}
    for name, mod in peft_model.named_modules():
        if not hasattr(mod, "lora_A") or "default" not in mod.lora_A:
            continue
        path = name.removeprefix("base_model.model.")
        a = mod.lora_A["default"].weight.detach().double()
        b = mod.lora_B["default"].weight.detach().double()
        scale = float(mod.scaling["default"])
        delta = scale * (b @ a)
        modules[path] = {"rank": a.shape[0], "in": a.shape[1], "out": b.shape[0],
                         "scale": scale, "delta_sum": float(delta.sum()),
                         "delta_fro": float(delta.norm()), "a_sum": float(a.sum())}
    return modules


def write_adapter(base, out: Path, config: LoraConfig, dtype=None, seed=0):
    model = tiny_llama() if base is None else base
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    if dtype is not None:
        peft_model = peft_model.to(dtype)
    shutil.rmtree(out, ignore_errors=True)
    peft_model.save_pretrained(out, safe_serialization=True)
    (out / "README.md").unlink(missing_ok=True)  # PEFT's model-card template
    expected = {"modules": lora_expectations(peft_model)}
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    return peft_model


def write_sharded_model(out: Path):
    model = tiny_llama()
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, max_shard_size="40KB", safe_serialization=True)
    # What the shards hold, read back with safetensors itself.
    tensors = {}
    for shard in sorted(out.glob("*.safetensors")):
        for name, t in load_file(shard).items():
            tensors[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                             "sum": float(t.double().sum()), "file": shard.name}
    (out / "expected.json").write_text(json.dumps({"tensors": tensors}, indent=1, sort_keys=True) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    root = args.out
    root.mkdir(parents=True, exist_ok=True)

    write_sharded_model(root / "tiny-llama-sharded")
    common = dict(init_lora_weights=False, lora_dropout=0.0)
    write_adapter(None, root / "peft" / "plain",
                  LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                             **common), seed=1)
    write_adapter(None, root / "peft" / "rslora",
                  LoraConfig(r=8, lora_alpha=16, use_rslora=True,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], **common),
                  seed=2)
    write_adapter(None, root / "peft" / "rank-pattern",
                  LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                             rank_pattern={"model.layers.1.self_attn.q_proj": 2, "up_proj": 6},
                             alpha_pattern={"up_proj": 3.0}, **common), seed=3)
    write_adapter(None, root / "peft" / "regex-bf16",
                  LoraConfig(r=4, lora_alpha=4, target_modules=r".*\.mlp\.(gate|up)_proj",
                             **common), dtype=torch.bfloat16, seed=4)
    # A mergeable set: the same modules, four different scale rules, one of them bf16.
    qv = ["q_proj", "v_proj"]
    write_adapter(None, root / "peft-set" / "plain", LoraConfig(r=4, lora_alpha=8, target_modules=qv, **common), seed=11)
    write_adapter(None, root / "peft-set" / "rslora",
                  LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=qv, **common), seed=12)
    write_adapter(None, root / "peft-set" / "patterns",
                  LoraConfig(r=4, lora_alpha=8, target_modules=qv,
                             rank_pattern={"model.layers.1.self_attn.v_proj": 2},
                             alpha_pattern={"v_proj": 3.0}, **common), seed=13)
    write_adapter(None, root / "peft-set" / "rank6-bf16",
                  LoraConfig(r=6, lora_alpha=12, target_modules=qv, **common),
                  dtype=torch.bfloat16, seed=14)
    dora = root / "peft" / "dora"
    write_adapter(None, dora, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True, **common),
                  seed=5)
    (dora / "expected.json").unlink()  # revmerge rejects DoRA; nothing to compare
    print(f"fixtures written under {root}")


if __name__ == "__main__":
    main()
