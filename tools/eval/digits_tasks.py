"""The fidelity setting: scikit-learn's bundled handwritten digits (8 × 8 images, 10 classes), a
small MLP pretrained on them, and tasks derived from them (input transformations and label
maps), each fine-tuned with LoRA and written as a real PEFT adapter folder.

Everything is numpy: forward, backward, Adam. Seeds are fixed, so the same settings give the
same adapters bit for bit on one machine.
"""
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

HIDDEN = 64
LAYERS = ["layers.0.fc", "layers.1.fc", "layers.2.fc"]  # 64→64, 64→64, 64→10


def _img(x):
    return x.reshape(-1, 8, 8)


# name -> (input transform, label map). Every task keeps the 10-way output.
TASKS = {
    "rot90": (lambda x: np.rot90(_img(x), 1, axes=(1, 2)).reshape(-1, 64), lambda y: y),
    "flip_lr": (lambda x: _img(x)[:, :, ::-1].reshape(-1, 64), lambda y: y),
    "invert": (lambda x: 1.0 - x, lambda y: y),
    "shift_labels": (lambda x: x, lambda y: (y + 3) % 10),
    "rot180": (lambda x: np.rot90(_img(x), 2, axes=(1, 2)).reshape(-1, 64), lambda y: y),
    "transpose": (lambda x: _img(x).transpose(0, 2, 1).reshape(-1, 64), lambda y: y),
    "reverse_labels": (lambda x: x, lambda y: 9 - y),
    "flip_ud": (lambda x: _img(x)[:, ::-1, :].reshape(-1, 64), lambda y: y),
}


# Related tasks: the digits shifted sideways by a few pixels (wrapping), labels kept — one
# transformation at eight strengths, so the tasks' adapters share structure.
RELATED = {f"roll{k:+d}": (lambda x, k=k: np.roll(_img(x), k, axis=2).reshape(-1, 64), lambda y: y)
           for k in (-4, -3, -2, -1, 1, 2, 3, 4)}


def load_data(seed=0):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = d.data.astype(np.float64) / 16.0
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.7 * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def task_data(name, split):
    fx, fy = TASKS[name] if name in TASKS else RELATED[name]
    x, y = split
    return np.ascontiguousarray(fx(x)), fy(y)


# ---------------------------------------------------------------------------------------------
# The network: three linear layers with ReLU between; LoRA deltas added to each weight.

def init_base(seed):
    rng = np.random.default_rng(seed)
    dims = [(HIDDEN, 64), (HIDDEN, HIDDEN), (10, HIDDEN)]
    return {f"{n}.weight": rng.normal(0, np.sqrt(2.0 / i), (o, i)) for n, (o, i) in zip(LAYERS, dims)} | \
           {f"{n}.bias": np.zeros(o) for n, (o, _) in zip(LAYERS, dims)}


def forward(params, x, deltas=None):
    """Logits and the activations backward() needs. deltas: layer -> out × in added to W."""
    acts = [x]
    h = x
    for k, n in enumerate(LAYERS):
        w = params[f"{n}.weight"] + (deltas[n] if deltas and n in deltas else 0)
        z = h @ w.T + params[f"{n}.bias"]
        h = np.maximum(z, 0) if k < len(LAYERS) - 1 else z
        acts.append(h)
    return h, acts


def softmax_grad(logits, y):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
    p[np.arange(len(y)), y] -= 1
    return loss, p / len(y)


def accuracy(params, x, y, deltas=None):
    return float((forward(params, x, deltas)[0].argmax(1) == y).mean())


class Adam:
    def __init__(self, shapes, lr):
        self.lr, self.t = lr, 0
        self.m = {k: np.zeros(s) for k, s in shapes.items()}
        self.v = {k: np.zeros(s) for k, s in shapes.items()}

    def step(self, params, grads):
        self.t += 1
        for k, g in grads.items():
            self.m[k] = 0.9 * self.m[k] + 0.1 * g
            self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
            mh = self.m[k] / (1 - 0.9**self.t)
            vh = self.v[k] / (1 - 0.999**self.t)
            params[k] -= self.lr * mh / (np.sqrt(vh) + 1e-8)


def pretrain(train, seed, steps):
    params = init_base(seed)
    opt = Adam({k: v.shape for k, v in params.items()}, 1e-2)
    x, y = train
    for _ in range(steps):
        logits, acts = forward(params, x)
        _, g = softmax_grad(logits, y)
        grads = {}
        for k in reversed(range(len(LAYERS))):
            n = LAYERS[k]
            grads[f"{n}.weight"] = g.T @ acts[k]
            grads[f"{n}.bias"] = g.sum(0)
            if k:
                g = (g @ params[f"{n}.weight"]) * (acts[k] > 0)
        opt.step(params, grads)
    return params


def finetune_lora(params, train, rank, alpha, seed, steps):
    """LoRA on every layer (B starts at zero, as PEFT); returns {layer: (A r×in, B out×r)}."""
    rng = np.random.default_rng(seed)
    scale = alpha / rank
    lora = {}
    for n in LAYERS:
        out, inp = params[f"{n}.weight"].shape
        lora[f"{n}.A"] = rng.uniform(-1, 1, (rank, inp)) / np.sqrt(inp)
        lora[f"{n}.B"] = np.zeros((out, rank))
    opt = Adam({k: v.shape for k, v in lora.items()}, 1e-2)
    x, y = train
    for _ in range(steps):
        deltas = {n: scale * lora[f"{n}.B"] @ lora[f"{n}.A"] for n in LAYERS}
        logits, acts = forward(params, x, deltas)
        _, g = softmax_grad(logits, y)
        grads = {}
        for k in reversed(range(len(LAYERS))):
            n = LAYERS[k]
            a, b, h = lora[f"{n}.A"], lora[f"{n}.B"], acts[k]
            grads[f"{n}.B"] = scale * g.T @ (h @ a.T)
            grads[f"{n}.A"] = scale * (g @ b).T @ h
            if k:
                g = (g @ (params[f"{n}.weight"] + deltas[n])) * (acts[k] > 0)
        opt.step(lora, grads)
    return {n: (lora[f"{n}.A"], lora[f"{n}.B"]) for n in LAYERS}


# ---------------------------------------------------------------------------------------------
# PEFT folders.

def write_adapter(folder: Path, lora, rank, alpha):
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for n, (a, b) in lora.items():
        tensors[f"base_model.model.{n}.lora_A.weight"] = a.astype(np.float32)
        tensors[f"base_model.model.{n}.lora_B.weight"] = b.astype(np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": ["fc"],
              "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "fan_in_fan_out": False,
              "init_lora_weights": True, "task_type": None, "base_model_name_or_path": None,
              "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _pattern(patterns, path, default):
    for key, value in patterns.items():
        if path == key or path.endswith("." + key):
            return value
    return default


def read_deltas(folder: Path):
    """{layer: s · B A} from a PEFT folder, with r / alpha / their patterns / rslora applied."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    deltas = {}
    for n in LAYERS:
        a = tensors[f"base_model.model.{n}.lora_A.weight"].astype(np.float64)
        b = tensors[f"base_model.model.{n}.lora_B.weight"].astype(np.float64)
        r = _pattern(cfg.get("rank_pattern") or {}, n, cfg["r"])
        alpha = _pattern(cfg.get("alpha_pattern") or {}, n, cfg["lora_alpha"])
        s = alpha / (np.sqrt(r) if cfg.get("use_rslora") else r)
        deltas[n] = s * b @ a
    return deltas
