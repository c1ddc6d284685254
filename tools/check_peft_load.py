#!/usr/bin/env python3
"""Loads pairs of PEFT adapter folders onto a base model with PEFT itself and checks that each
pair applies the same delta to every module and gives the same logits.

    python3 tools/check_peft_load.py [--base MODEL_DIR] [--tol 1e-5] CANDIDATE REFERENCE [CANDIDATE REFERENCE ...]

Without --base the tiny Llama of tools/make_fixtures.py is built in code.

Exit status 0 when they agree; prints the largest relative difference either way.
"""
import argparse
import sys
from pathlib import Path

import torch
from peft import PeftModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import tiny_llama  # noqa: E402


def deltas(model):
    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            a = mod.lora_A["default"].weight.detach().double()
            b = mod.lora_B["default"].weight.detach().double()
            out[name] = float(mod.scaling["default"]) * (b @ a)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("pairs", nargs="+", metavar="CANDIDATE REFERENCE")
    ap.add_argument("--base", help="Hugging Face model folder the adapters belong to")
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()

    def base():
        if args.base is None:
            return tiny_llama()
        from transformers import AutoModelForCausalLM
        return AutoModelForCausalLM.from_pretrained(args.base).eval()

    if len(args.pairs) % 2:
        ap.error("give CANDIDATE REFERENCE pairs")
    status = 0
    for candidate, reference in zip(args.pairs[::2], args.pairs[1::2]):
        cand = PeftModel.from_pretrained(base(), candidate).eval()
        ref = PeftModel.from_pretrained(base(), reference).eval()
        dc, dr = deltas(cand), deltas(ref)
        if dc.keys() != dr.keys():
            print(f"{candidate}: modules differ from {reference}: {sorted(dc.keys() ^ dr.keys())}")
            status = 1
            continue
        worst = max(float((dc[k] - dr[k]).norm() / max(dr[k].norm(), 1e-30)) for k in dr)
        vocab = cand.get_base_model().config.vocab_size
        ids = (torch.arange(12).reshape(1, 12) * 7) % vocab
        with torch.no_grad():
            lc, lr = cand(ids).logits.double(), ref(ids).logits.double()
        logit_rel = float((lc - lr).norm() / lr.norm())
        print(f"{candidate}: modules: {len(dr)}  max relative delta difference: {worst:.3e}  "
              f"relative logit difference: {logit_rel:.3e}")
        if not (worst <= args.tol and logit_rel <= args.tol):
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
