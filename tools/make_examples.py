#!/usr/bin/env python3
"""Writes the shipped example: a small Llama-shaped base model and eight LoRA task adapters on
it, all saved by transformers / PEFT themselves (no downloads).

The adapters are built with the structure real task adapters show, so that merging them is a
meaningful job: per module a component all tasks share, a few directions that groups of tasks
share, a part of each task's own, and small noise.

    python3 tools/make_examples.py examples
"""
import argparse
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

SEED = 7
TASKS = ["sentiment", "topic", "qa", "summary", "translate", "code", "math", "chat"]
RANK = 16
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_model():
    torch.manual_seed(SEED)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def structured_factors(shape, gen, n_tasks):
    """n_tasks factors of `shape`: shared + group directions + own part + noise."""
    shared = torch.randn(shape, generator=gen)
    groups = [torch.randn(shape, generator=gen) for _ in range(2)]
    out = []
    for t in range(n_tasks):
        own = torch.randn(shape, generator=gen)
        noise = torch.randn(shape, generator=gen)
        out.append(shared + 0.6 * groups[t % 2] + 0.25 * own + 0.02 * noise)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    out = args.out
    shutil.rmtree(out / "tiny-llama", ignore_errors=True)
    base_model().save_pretrained(out / "tiny-llama", safe_serialization=True)

    models = []
    for task in TASKS:
        cfg = LoraConfig(r=RANK, lora_alpha=16, target_modules=MODULES, lora_dropout=0.0,
                         init_lora_weights=False)
        models.append(get_peft_model(base_model(), cfg))
    gen = torch.Generator().manual_seed(SEED)
    names = [n for n, m in models[0].named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    for name in names:
        mods = [dict(m.named_modules())[name] for m in models]
        a_shape = mods[0].lora_A["default"].weight.shape
        b_shape = mods[0].lora_B["default"].weight.shape
        a_all = structured_factors(a_shape, gen, len(TASKS))
        b_all = structured_factors(b_shape, gen, len(TASKS))
        with torch.no_grad():
            for mod, a, b in zip(mods, a_all, b_all):
                mod.lora_A["default"].weight.copy_(a / a_shape[1] ** 0.5)
                mod.lora_B["default"].weight.copy_(b * 0.01)
    for task, model in zip(TASKS, models):
        dest = out / "adapters" / task
        shutil.rmtree(dest, ignore_errors=True)
        model.save_pretrained(dest, safe_serialization=True)
        (dest / "README.md").unlink(missing_ok=True)
    print(f"example written under {out}")


if __name__ == "__main__":
    main()
