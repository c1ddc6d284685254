#!/usr/bin/env python3
"""Golden cases for the classic methods, computed by the real tools on small local fixtures:

  golden/peft/      three LoRA adapters on a tiny Llama, and what PEFT's add_weighted_adapter
                    writes for every combination type (out/<case>/), listed in cases.json;
  golden/mergekit/  a tiny Llama base, three full fine-tunes, and what mergekit's run_merge
                    writes for each YAML config (<case>.yml -> out/<case>/), in cases.json.

DARE and DELLA draw a random mask. To compare with the same mask, this script replaces the
Bernoulli draw inside PEFT (merge_utils.random_pruning) and mergekit (sparsify.bernoulli, and
the draw inside sparsify.della_magprune) by revmerge's counter-based mask (counter_uniform below, the arithmetic of host/kernels/counter_rng.hpp);
everything else — trimming, election, disjoint mean, weighting, rescaling, SVD — is the tools'
own code.

Run once (needs torch, transformers, peft, mergekit 0.1.5, numpy) and commit
tests/fixtures/golden; the fixtures are the same bytes on every run:
    python3 tools/make_golden.py tests/fixtures/golden [--only peft|mergekit]
mergekit pins its own torch; its package alone, beside the project's .venv, is enough:
    pip install --target /tmp/mk --no-deps mergekit==0.1.5 immutables sentencepiece protobuf
    PYTHONPATH=/tmp/mk .venv/bin/python tools/make_golden.py tests/fixtures/golden --only mergekit
"""
import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from golden_mergekit_cases import MK_BF16_CASES, MK_CASES, MK_DEEP_CASES, MK_LORA_CASES

M64 = (1 << 64) - 1


def mix64(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stream_id(name: str) -> int:
    h = 0xCBF29CE484222325
    for byte in name.encode():
        h = ((h ^ byte) * 0x100000001B3) & M64
    return h


def counter_uniform(seed: int, stream: int, count: int):
    with np.errstate(over="ignore"):
        key = mix64(np.array([seed], np.uint64) ^ mix64(np.array([stream], np.uint64)))
        z = mix64(key ^ np.arange(count, dtype=np.uint64))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def keep_mask(name: str, task: int, shape, density: float, seed: int):
    u = counter_uniform(seed, stream_id(f"{name}#{task}"), int(np.prod(shape)))
    return torch.from_numpy((u < density).astype(np.float32)).reshape(shape)


def tiny_llama(seed, hidden, inter, layers=2, heads=2, kv_heads=1, vocab=32):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


class Identify:
    """Finds which (tensor name, task) a tensor handed to the tools' drop function is."""

    def __init__(self):
        self.known = []

    def add(self, name, task, tensor):
        self.known.append((name, task, tensor.detach().clone().float()))

    def __call__(self, tensor):
        hits = [(n, t) for n, t, k in self.known
                if k.shape == tensor.shape and torch.equal(k, tensor.detach().float())]
        if len(hits) != 1:
            raise RuntimeError(f"cannot tell which task a {tuple(tensor.shape)} tensor is ({hits})")
        return hits[0]


def save_adapters(peft_model, folder: Path, names=None):
    """PEFT's save_pretrained, then made the same bytes on every run: the model cards it writes
    (README.md, here and in each adapter's folder) removed, and each adapter_config.json's
    target_modules — a set, written in the order of the process's string hashes — sorted."""
    peft_model.save_pretrained(folder, **({"selected_adapters": names} if names else {}))
    (folder / "README.md").unlink(missing_ok=True)
    for saved in [folder / n for n in names] if names else [folder]:
        (saved / "README.md").unlink(missing_ok=True)
        path = saved / "adapter_config.json"
        config = json.loads(path.read_text())
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True))  # as PEFT writes it


# ----------------------------------------------------------------------------------------------
# PEFT: add_weighted_adapter on three adapters of one tiny Llama.

PEFT_WEIGHTS = [1.0, -0.5, 0.75]
PEFT_CASES = [  # name, PEFT combination_type, revmerge method, mode, extra
    ("linear", "linear", "linear", "separate", {}),
    ("ties", "ties", "ties", "separate", {"density": 0.5}),
    ("ties_frequency", "ties", "ties", "separate", {"density": 0.4, "majority_sign": "frequency"}),
    ("dare_linear", "dare_linear", "dare_linear", "separate", {"density": 0.6, "seed": 7}),
    ("dare_ties", "dare_ties", "dare_ties", "separate", {"density": 0.6, "seed": 7}),
    ("magnitude_prune", "magnitude_prune", "magnitude_prune", "separate", {"density": 0.3}),
    ("cat", "cat", "cat", "combined", {}),
    ("svd", "svd", "svd", "combined", {}),
    ("svd_rank6", "svd", "svd", "combined", {"rank": 6}),
    ("ties_svd", "ties_svd", "ties", "combined", {"density": 0.5}),
    ("dare_linear_svd", "dare_linear_svd", "dare_linear", "combined", {"density": 0.6, "seed": 3}),
    ("dare_ties_svd", "dare_ties_svd", "dare_ties", "combined", {"density": 0.6, "seed": 3}),
    ("magnitude_prune_svd", "magnitude_prune_svd", "magnitude_prune", "combined", {"density": 0.3}),
]


def make_peft(root: Path):
    from peft import LoraConfig, get_peft_model
    from peft.utils import merge_utils
    import peft.tuners.lora.model as lora_model

    targets = ["q_proj", "v_proj", "down_proj"]
    configs = [LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False),
               LoraConfig(r=4, lora_alpha=16, use_rslora=True, target_modules=targets,
                          init_lora_weights=False),
               LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)]
    model = tiny_llama(1234, hidden=32, inter=48)
    names = ["t0", "t1", "t2"]
    peft_model = get_peft_model(model, configs[0], adapter_name="t0")
    for name, cfg in zip(names[1:], configs[1:]):
        peft_model.add_adapter(name, cfg)
    # Factors with a shared part, so signs agree in places and conflict in others.
    gen = torch.Generator().manual_seed(99)
    shared = {}
    for mod_name, mod in peft_model.named_modules():
        if not hasattr(mod, "lora_A") or "t0" not in mod.lora_A:
            continue
        for i, n in enumerate(names):
            a, b = mod.lora_A[n].weight, mod.lora_B[n].weight
            sa = shared.setdefault((mod_name, "A"), torch.randn(a.shape, generator=gen))
            sb = shared.setdefault((mod_name, "B"), torch.randn(b.shape, generator=gen))
            with torch.no_grad():
                a.copy_(0.1 * (sa + torch.randn(a.shape, generator=gen)))
                b.copy_(0.1 * (sb + torch.randn(b.shape, generator=gen)))
    shutil.rmtree(root, ignore_errors=True)
    save_adapters(peft_model, root / "adapters", names)

    # Every tensor the drop step may see: the factors (separate) and the deltas (combined).
    ident = Identify()
    for mod_name, mod in peft_model.named_modules():
        if not hasattr(mod, "lora_A") or "t0" not in mod.lora_A:
            continue
        path = mod_name.removeprefix("base_model.model.")
        for i, n in enumerate(names):
            ident.add(path + ".lora_A", i, mod.lora_A[n].weight)
            ident.add(path + ".lora_B", i, mod.lora_B[n].weight)
            ident.add(path, i, mod.get_delta_weight(n))
    seed_box = {}

    def random_pruning(tensor, density, rescale):
        name, task = ident(tensor)
        pruned = tensor * keep_mask(name, task, tensor.shape, density, seed_box["seed"])
        return pruned / density if rescale else pruned

    merge_utils.random_pruning = random_pruning
    cases = []
    for case, ctype, method, mode, extra in PEFT_CASES:
        seed_box["seed"] = extra.get("seed", 0)
        peft_model.add_weighted_adapter(
            adapters=names, weights=PEFT_WEIGHTS, adapter_name=case, combination_type=ctype,
            svd_rank=extra.get("rank"), density=extra.get("density"),
            majority_sign_method=extra.get("majority_sign", "total"))
        save_adapters(peft_model, root / "out", [case])
        cases.append({"name": case, "peft_combination_type": ctype, "method": method,
                      "mode": mode, "weights": PEFT_WEIGHTS, **extra})
    assert lora_model is not None
    (root / "cases.json").write_text(json.dumps({"tasks": names, "cases": cases}, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------
# mergekit: run_merge on three full fine-tunes of a tiny Llama.

# The cases (method and parameters each) are in golden_mergekit_cases.py, beside this script.


def make_loras(root: Path):
    """LoRA adapters for MK_LORA_CASES, drawn from their own generator so that nothing else moves:
    rank 4 on q_proj, v_proj and down_proj (lora/b with rslora), factors large enough that the
    delta is far above a bf16 weight's rounding."""
    from peft import LoraConfig, get_peft_model
    gen = torch.Generator().manual_seed(11)
    for name, model, cfg in [
            ("a", tiny_llama(4321, hidden=16, inter=24),
             LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)),
            ("b", tiny_llama(2468, hidden=16, inter=24),
             LoraConfig(r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False))]:
        peft_model = get_peft_model(model, cfg)
        with torch.no_grad():
            for mod in peft_model.modules():
                if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                    for w in (mod.lora_A["default"].weight, mod.lora_B["default"].weight):
                        w.copy_(0.3 * torch.randn(w.shape, generator=gen))
        save_adapters(peft_model, root / "lora" / name)


def make_mergekit(root: Path):
    import mergekit.sparsify as sparsify
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    base = tiny_llama(4321, hidden=16, inter=24)
    base.save_pretrained(root / "base", safe_serialization=True)
    base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    shared = {k: torch.randn(v.shape, generator=gen) for k, v in base_sd.items()}
    ident = Identify()
    names = ["ft0", "ft1", "ft2"]
    for i, n in enumerate(names):
        model = tiny_llama(4321, hidden=16, inter=24)
        with torch.no_grad():
            for k, p in model.state_dict().items():
                own = torch.randn(p.shape, generator=gen)
                p.add_(0.02 * (0.7 * shared[k] + own))
        model.save_pretrained(root / n, safe_serialization=True)
        for k, p in model.state_dict().items():
            ident.add(k, i, p - base_sd[k])
    # The five-layer set, drawn after the first so that the first stays as it was.
    deep_gen = torch.Generator().manual_seed(6)
    deep_base = tiny_llama(8765, hidden=16, inter=24, layers=5)
    deep_base.save_pretrained(root / "deep" / "base", safe_serialization=True)
    deep_sd = {k: v.detach().clone() for k, v in deep_base.state_dict().items()}
    deep_shared = {k: torch.randn(v.shape, generator=deep_gen) for k, v in deep_sd.items()}
    for i, n in enumerate(names):
        model = tiny_llama(8765, hidden=16, inter=24, layers=5)
        with torch.no_grad():
            for k, p in model.state_dict().items():
                p.add_(0.02 * (0.7 * deep_shared[k] + torch.randn(p.shape, generator=deep_gen)))
        model.save_pretrained(root / "deep" / n, safe_serialization=True)
        for k, p in model.state_dict().items():
            ident.add(k, i, p - deep_sd[k])
    # A bf16 set (what people merge): the same recipe, stored in bfloat16.
    bf_gen = torch.Generator().manual_seed(7)
    bf_base = tiny_llama(2468, hidden=16, inter=24).to(torch.bfloat16)
    bf_base.save_pretrained(root / "bf16" / "base", safe_serialization=True)
    bf_sd = {k: v.detach().clone() for k, v in bf_base.state_dict().items()}
    bf_shared = {k: torch.randn(v.shape, generator=bf_gen) for k, v in bf_sd.items()}
    for i, n in enumerate(names):
        model = tiny_llama(2468, hidden=16, inter=24)
        with torch.no_grad():
            for k, p in model.state_dict().items():
                p.copy_(bf_sd[k].float() + 0.02 * (0.7 * bf_shared[k] + torch.randn(p.shape, generator=bf_gen)))
        model.to(torch.bfloat16).save_pretrained(root / "bf16" / n, safe_serialization=True)
    seed_box = {}

    def bernoulli(tensor, density, rescale_norm=None):
        if density >= 1:
            return tensor
        name, task = ident(tensor)
        mask = keep_mask(name, task, tensor.shape, density, seed_box["seed"])
        return sparsify.rescaled_masked_tensor(tensor.float(), mask, rescale_norm).to(tensor.dtype)

    della_magprune = sparsify.della_magprune

    def della(tensor, density, epsilon, rescale_norm=None):
        # mergekit's own ranks and probabilities; only the draw is revmerge's: element j is
        # kept when counter_uniform(j) < its probability (compared in double).
        if density >= 1 or density <= 0:
            return della_magprune(tensor, density, epsilon, rescale_norm)
        name, task = ident(tensor)
        u = counter_uniform(seed_box["seed"], stream_id(f"{name}#{task}"), tensor.numel())
        draw = torch.bernoulli

        def counter_bernoulli(probs):
            keep = u.reshape(probs.shape) < probs.double().numpy()
            return torch.from_numpy(keep).to(probs.dtype)

        torch.bernoulli = counter_bernoulli
        try:
            return della_magprune(tensor, density, epsilon, rescale_norm)
        finally:
            torch.bernoulli = draw

    sparsify.bernoulli = bernoulli
    sparsify.della_magprune = della
    cases = []
    cwd = os.getcwd()
    os.chdir(root)  # mergekit resolves the YAML's relative paths against the working folder
    try:
        for case, spec in MK_CASES.items():
            models = []
            for i, n in enumerate(names):
                if n not in spec.get("models", names):
                    continue
                params = {"weight": spec["weights"][i]} if "weights" in spec else {}
                if "densities" in spec:
                    params["density"] = spec["densities"][i]
                for key, values in spec.get("extra", {}).items():
                    params[key] = values[i]
                models.append({"model": n, "parameters": params} if params else {"model": n})
            cfg = {"merge_method": spec["merge_method"], "models": models, "dtype": "float32"}
            if not spec.get("no_base"):
                cfg["base_model"] = "base"
            if "parameters" in spec:
                cfg["parameters"] = spec["parameters"]
            text = yaml.safe_dump(cfg, sort_keys=False)
            Path(f"{case}.yml").write_text(text)
            seed_box["seed"] = spec.get("seed", 0)
            run_merge(MergeConfiguration.model_validate(cfg), out_path=f"out/{case}",
                      options=MergeOptions(copy_tokenizer=False, write_model_card=False,
                                           lazy_unpickle=False))
            cases.append({"name": case, "config": f"{case}.yml", "seed": spec.get("seed", 0)})
        for case, spec in MK_BF16_CASES.items():
            models = [{"model": f"bf16/{n}", "parameters": {"weight": w} | (
                          {"density": spec["density"]} if "density" in spec else {})}
                      for n, w in zip(names, spec["weights"])]
            cfg = {"merge_method": spec["merge_method"], "base_model": "bf16/base", "models": models,
                   "dtype": spec["dtype"]}
            if "out_dtype" in spec:
                cfg["out_dtype"] = spec["out_dtype"]
            Path(f"{case}.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            seed_box["seed"] = 0
            run_merge(MergeConfiguration.model_validate(cfg), out_path=f"out/{case}",
                      options=MergeOptions(copy_tokenizer=False, write_model_card=False,
                                           lazy_unpickle=False))
            cases.append({"name": case, "config": f"{case}.yml", "seed": 0, "bf16": True})
        for case, spec in MK_DEEP_CASES.items():
            cfg = {"merge_method": spec["merge_method"]}
            if "slices" in spec:
                slices = [dict(sl, sources=[dict(src, model=f"deep/{src['model']}")
                                            for src in sl["sources"]]) for sl in spec["slices"]]
                cfg["slices"] = slices
                if "base_model" in spec:
                    cfg["base_model"] = f"deep/{spec['base_model']}"
            else:
                models = []
                for n in spec.get("models", names):
                    params = spec.get("model_params", {}).get(n)
                    models.append({"model": f"deep/{n}", "parameters": params} if params
                                  else {"model": f"deep/{n}"})
                cfg["base_model"] = "deep/base"
                cfg["models"] = models
            if "parameters" in spec:
                cfg["parameters"] = spec["parameters"]
            cfg["dtype"] = "float32"
            Path(f"{case}.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            seed_box["seed"] = spec.get("seed", 0)
            run_merge(MergeConfiguration.model_validate(cfg), out_path=f"out/{case}",
                      options=MergeOptions(copy_tokenizer=False, write_model_card=False,
                                           lazy_unpickle=False))
            cases.append({"name": case, "config": f"{case}.yml", "seed": spec.get("seed", 0)})
        make_loras(Path("."))
        for case, cfg in MK_LORA_CASES.items():
            Path(f"{case}.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            seed_box["seed"] = 0
            with tempfile.TemporaryDirectory() as cache:
                run_merge(MergeConfiguration.model_validate(cfg), out_path=f"out/{case}",
                          options=MergeOptions(copy_tokenizer=False, write_model_card=False,
                                               lazy_unpickle=False, lora_merge_cache=cache))
            cases.append({"name": case, "config": f"{case}.yml", "seed": 0,
                          "bf16": cfg["base_model"].startswith("bf16/")})
    finally:
        os.chdir(cwd)
    (root / "cases.json").write_text(json.dumps({"cases": cases}, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", choices=["peft", "mergekit"],
                    help="make one tool's cases (the other's folder is left as it is)")
    args = ap.parse_args()
    if args.only != "mergekit":
        make_peft(args.out / "peft")
    if args.only != "peft":
        make_mergekit(args.out / "mergekit")


if __name__ == "__main__":
    main()
