#!/usr/bin/env python3
"""Checks a full model revmerge wrote from a merged adapter (`merge --full-model`) against
PEFT: transformers loads both the written model and the base, PEFT applies the merged adapter
to the base and merges it in (merge_and_unload), and every weight and the logits must agree.

    python3 tools/check_full_model.py --base BASE --adapter MERGED_ADAPTER --model FULL_MODEL [--tol 1e-5]
"""
import argparse
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    ours = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, args.adapter).merge_and_unload().eval()
    want, got = peft.state_dict(), ours.state_dict()
    worst = 0.0
    for name, w in want.items():
        d = float((got[name].double() - w.double()).abs().max()) / max(float(w.abs().max()), 1e-12)
        worst = max(worst, d)
    ids = torch.arange(0, 16).reshape(2, 8) % ours.config.vocab_size
    with torch.no_grad():
        a, b = ours(ids).logits.double(), peft(ids).logits.double()
    logits = float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)
    print(f"{len(want)} weights: largest relative difference {worst:.3g}; logits {logits:.3g}")
    sys.exit(0 if max(worst, logits) <= args.tol else 1)


if __name__ == "__main__":
    main()
