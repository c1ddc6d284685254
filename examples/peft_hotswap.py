#!/usr/bin/env python3
"""Serving many tasks from one bundle: a PEFT model loaded once, any task swapped into it from a
bundle resident on the device — without a file round trip.

    python3 examples/peft_hotswap.py [--device cpu|cuda] [--work DIR]

Makes a bundle of the eight example adapters (examples/adapters, for examples/tiny-llama) with
`--method auto`, opens it with revmerge.Bundle, loads the first task as a PeftModel, then brings
every task in three ways:

  1. peft.set_peft_model_state_dict(model, bundle.state_dict(task))
  2. peft.utils.hotswap.hotswap_adapter_from_state_dict(model, bundle.state_dict(task, adapter_name=…))
  3. bundle.materialize(task, the model's own LoRA parameters) — in place, nothing allocated

and checks each against the reference route a server without revmerge would take: `revmerge
revert` writes the task's adapter folder and PeftModel.from_pretrained loads it. The logits must
agree within 1e-6 (they are the same bits in float32). Exit status 0 when every task does.
"""
import argparse
import pathlib
import shutil
import sys
import tempfile

import torch
from peft import PeftModel, set_peft_model_state_dict
from peft.utils.hotswap import hotswap_adapter_from_state_dict
from transformers import AutoModelForCausalLM
from transformers.utils import logging as transformers_logging

import revmerge

HERE = pathlib.Path(__file__).resolve().parent
TOLERANCE = 1e-6


def base_model(device):
    return AutoModelForCausalLM.from_pretrained(HERE / "tiny-llama", dtype=torch.float32).to(device).eval()


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the bundle and the model both)")
    ap.add_argument("--work", help="folder for the bundle and the reference adapters (default: a scratch one)")
    args = ap.parse_args()
    transformers_logging.disable_progress_bar()
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="revmerge-hotswap-"))
    device = torch.device(args.device)
    adapters = sorted((HERE / "adapters").iterdir())

    bundle_dir = work / "bundle"
    revmerge.merge(*adapters, out=bundle_dir, method="auto", storage=0.5, force=True, quiet=True)
    bundle = revmerge.Bundle(bundle_dir, device=args.device)
    print(f"{bundle!r}, {bundle.memory_bytes / 2**10:.1f} KiB resident")

    # The model a server keeps: the base with the first task loaded once (its adapter_config gives
    # the rank and lora_alpha = rank every task of the bundle shares).
    first = work / "loaded"
    bundle.save_adapter(bundle.tasks[0], first, force=True)
    model = PeftModel.from_pretrained(base_model(device), first).eval()
    config = model.peft_config["default"]
    lora_parameters = {k: p for k, p in model.named_parameters() if ".lora_A." in k or ".lora_B." in k}

    tokens = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0)).to(device)
    loaded = logits(model, tokens)
    worst, apart = 0.0, float("inf")
    for task in reversed(bundle.tasks):  # reversed: each swap replaces a different task
        reference_dir = work / "reverted" / task
        revmerge.revert(bundle_dir, task=task, out=reference_dir, device=args.device, force=True, quiet=True)
        want = logits(PeftModel.from_pretrained(base_model(device), reference_dir).eval(), tokens)
        if task != bundle.tasks[0]:  # the check could fail: the tasks' outputs are far apart
            apart = min(apart, (want - loaded).abs().max().item())

        routes = {}
        set_peft_model_state_dict(model, bundle.state_dict(task, dtype="float32", framework="torch"))
        routes["set_peft_model_state_dict"] = logits(model, tokens)
        bundle.materialize(bundle.tasks[0], lora_parameters)  # something else in between
        hotswap_adapter_from_state_dict(
            model, bundle.state_dict(task, dtype="float32", adapter_name="default", framework="torch"),
            "default", config)
        routes["hotswap_adapter_from_state_dict"] = logits(model, tokens)
        bundle.materialize(bundle.tasks[0], lora_parameters)
        bundle.materialize(task, lora_parameters)  # in place, into the model's own parameters
        bundle.synchronize()
        routes["Bundle.materialize in place"] = logits(model, tokens)

        for route, got in routes.items():
            diff = (got - want).abs().max().item()
            worst = max(worst, diff)
            print(f"  {task:<10} {route:<32} max |Δ logits| = {diff:.3g}")
    if args.work is None:
        shutil.rmtree(work)
    ok = worst <= TOLERANCE and apart > 1000 * TOLERANCE
    print(f"{'ok' if ok else 'FAILED'}: every task, every route within {TOLERANCE:g} of the reverted "
          f"adapter (worst {worst:.3g}); tasks' logits at least {apart:.3g} apart")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
