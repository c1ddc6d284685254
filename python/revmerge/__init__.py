"""revmerge: reversible (RMM) and classic merging of LoRA adapters and fine-tuned models.

The command-line tool's commands run in this process with the same options and messages::

    revmerge.merge("adapters/math", "adapters/code", out="bundle", method="auto", storage=0.3)
    revmerge.revert("bundle", task="math", out="math-adapter")
    report = revmerge.compare("adapters/math", "adapters/code")   # the --json report, as a dict

and a bundle stays resident on a device, any task's LoRA factors rebuilt on demand::

    b = revmerge.Bundle("bundle", device="cuda:0")
    sd = b.state_dict("math", dtype="bfloat16", framework="torch")   # PEFT's key names
    set_peft_model_state_dict(model, sd)

Errors are raised as :class:`Error` (or a subclass) carrying the engine's message. Ctrl-C stops
a running command as it stops the program — its temporary outputs removed — and raises
KeyboardInterrupt.
"""
from __future__ import annotations

import json as _json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Union



def _blas_kernels_for_this_cpu() -> str | None:
    """The OPENBLAS_CORETYPE the revmerge program would choose (host/backend/blas_core.hpp):
    Debian's OpenBLAS falls back to generic SSE3 kernels on x86 CPUs it does not know, ~1.7×
    slower at single-precision GEMM. OpenBLAS reads the variable once, when it loads — while
    the extension below is imported — and its single- and double-precision kernels for these
    two names are those it would pick on the CPUs that have the features."""
    if os.environ.get("OPENBLAS_CORETYPE"):
        return None
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= set(flags):
        return "SkylakeX"
    if {"avx2", "fma"} <= set(flags):
        return "Haswell"
    return None


_kernels = _blas_kernels_for_this_cpu()
if _kernels:  # for the import only: other libraries loaded later choose for themselves
    os.environ["OPENBLAS_CORETYPE"] = _kernels
try:
    from ._revmerge import Bundle as _Bundle  # noqa: E402
finally:
    if _kernels:
        del os.environ["OPENBLAS_CORETYPE"]

from ._revmerge import (  # noqa: E402
    DeviceError,
    Error,
    FormatError,
    Interrupted,
    IoError,
    ShapeError,
    SolverError,
    UnsupportedError,
    UsageError,
    __version__,
)
from ._revmerge import blas_kernels  # noqa: E402
from ._revmerge import run_cli as _run_cli  # noqa: E402

__all__ = [
    "Bundle", "merge", "revert", "add", "compress", "compare", "inspect", "info", "devices", "run",
    "__version__",
    "Error", "IoError", "FormatError", "ShapeError", "UnsupportedError", "UsageError",
    "DeviceError", "SolverError", "Interrupted", "blas_kernels",
]

PathLike = Union[str, "os.PathLike[str]"]
Framework = Literal["dlpack", "torch", "numpy", "cupy"]


def run(*args: Any) -> str:
    """Runs ``revmerge ARGS…`` in this process; returns what it printed.

    ``revmerge.run("merge", "--help")`` prints nothing and returns the help text.
    """
    return _run_cli([os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args])


def _options(options: Mapping[str, Any]) -> list[str]:
    """keyword=value → ``--keyword value`` as the command line spells it: underscores become
    dashes, True a bare flag, False and None leave the option out, a list or tuple joins with
    commas."""
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(os.fspath(v)) if isinstance(v, os.PathLike) else str(v) for v in value)]
        else:
            out += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return out


def _paths(paths: Iterable[PathLike]) -> list[str]:
    return [os.fspath(p) for p in paths]


def merge(*inputs: PathLike, out: PathLike, **options: Any) -> str:
    """``revmerge merge INPUT… --out OUT [options]``: merges adapters or models.

    Options are the command's (``revmerge merge --help``) as keywords: ``method="auto"``,
    ``storage=0.3``, ``basis=2``, ``dtype="bf16"``, ``weights=[0.5, 0.5]``, ``force=True``,
    ``config="merge.yml"``, ``device="cuda"``. Returns what the command printed (``json=True``:
    the report as JSON text).
    """
    return _run_cli(["merge", *_paths(inputs), "--out", os.fspath(out), *_options(options)])


def revert(bundle: PathLike, *, out: PathLike, task: str | None = None, **options: Any) -> str:
    """``revmerge revert BUNDLE --task TASK --out OUT [options]``: a task's PEFT adapter (or,
    with ``full=True, base=...``, full model) rebuilt from a bundle; ``all=True`` rebuilds every
    task into OUT/<task>."""
    return _run_cli(["revert", os.fspath(bundle), "--out", os.fspath(out), *_options({"task": task, **options})])


def add(bundle: PathLike, *adapters: PathLike, out: PathLike, **options: Any) -> str:
    """``revmerge add BUNDLE ADAPTER… --out OUT [options]``: a new bundle with more tasks."""
    return _run_cli(["add", os.fspath(bundle), *_paths(adapters), "--out", os.fspath(out), *_options(options)])


def compress(*, base: PathLike, model: PathLike, rank: int, out: PathLike, **options: Any) -> dict[str, Any]:
    """``revmerge compress --base BASE --model FT --rank R --out OUT --json [options]``: a full
    fine-tune compressed to a PEFT LoRA adapter (randomized SVD of the delta); returns the report
    (per module the error against the exact truncation) as a dict."""
    return _json.loads(_run_cli(["compress", *_options({"base": base, "model": model, "rank": rank, "out": out}),
                                 "--json", *_options(options)]))


def info(path: PathLike) -> dict[str, Any]:
    """``revmerge info PATH --json``: what a safetensors file, checkpoint, adapter, model folder
    or bundle holds, as a dict."""
    return _json.loads(_run_cli(["info", os.fspath(path), "--json"]))


def devices() -> dict[str, Any]:
    """``revmerge devices --json``: the backends built in and the GPUs visible, as a dict."""
    return _json.loads(_run_cli(["devices", "--json"]))


def compare(*adapters: PathLike, **options: Any) -> dict[str, Any]:
    """``revmerge compare ADAPTER… --json [options]``: RMM at several basis sizes against the
    classic methods and the budgeted store, per task; returns the JSON report as a dict."""
    return _json.loads(_run_cli(["compare", *_paths(adapters), "--json", *_options(options)]))


def inspect(bundle: PathLike) -> dict[str, Any]:
    """``revmerge inspect BUNDLE --json``: a bundle's storage, errors and manifest, as a dict."""
    return _json.loads(_run_cli(["inspect", os.fspath(bundle), "--json"]))


class Bundle:
    """A bundle opened once onto a device, its stored tensors kept there until :meth:`close`.

    ``device`` is ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``. Any task's LoRA factors
    come back with the same bits as ``revmerge revert`` on that device, each module's at the
    module's rank (tasks of smaller rank zero-padded) with the scale folded into B — the
    adapter ``revert`` writes, whose ``lora_alpha`` equals its rank. Calls from several threads
    are safe.
    """

    def __init__(self, path: PathLike, device: str = "cpu", threads: int = 0) -> None:
        self._b = _Bundle(os.fspath(path), device, threads)

    @property
    def tasks(self) -> list[str]:
        """The task names, in the bundle's order."""
        return self._b.tasks

    @property
    def modules(self) -> list[str]:
        """The module paths (``model.layers.0.self_attn.q_proj`` …), in the bundle's order."""
        return self._b.modules

    @property
    def device(self) -> str:
        """Where its tensors live: ``"cpu"`` or ``"cuda:N"``."""
        return self._b.device

    @property
    def memory_bytes(self) -> int:
        """Bytes it holds on its device."""
        return self._b.memory_bytes

    def shape(self, module: str) -> tuple[int, int, int]:
        """``(rank, in_features, out_features)`` of a module: A is rank × in, B out × rank."""
        return self._b.shape(module)

    def scale(self, task: str | int, module: str) -> float:
        """The scale folded into task ``task``'s B of ``module`` (its adapter's alpha / r, or
        alpha / √r with rslora; 1 where the task lacks the module)."""
        return self._b.scale(task, module)

    def state_dict(self, task: str | int, dtype: str = "bfloat16", *, modules: Sequence[str] | None = None,
                   adapter_name: str | None = None, fold_scale: bool = True,
                   framework: Framework = "dlpack") -> dict[str, Any]:
        """Task ``task`` (name or index) as a dict keyed by PEFT's names
        (``base_model.model.<module>.lora_A.weight`` …; with ``adapter_name``,
        ``…lora_A.<adapter_name>.weight``, the names of a loaded model's parameters).

        The values live in one new allocation in the bundle's memory, owned by the arrays.
        ``framework="dlpack"`` gives objects any DLPack consumer takes without a copy
        (``torch.from_dlpack``, ``cupy.from_dlpack``, ``numpy.from_dlpack`` — numpy has no
        bfloat16); ``"torch"``, ``"numpy"`` or ``"cupy"`` makes that conversion here. ``dtype``:
        ``"bfloat16"``, ``"float16"`` or ``"float32"`` (a ``torch.dtype`` too). On a GPU the
        arrays are ready when this returns.

        ``fold_scale=False`` gives B divided by the task's :meth:`scale` before rounding: the
        factors for a model loaded with the task's own adapter config (its alpha and r), which
        applies that scale itself.
        """
        sd = self._b.state_dict(task, str(dtype), None if modules is None else list(modules), adapter_name,
                                fold_scale)
        if framework == "dlpack":
            return sd
        if framework == "torch":
            import torch
            convert = torch.from_dlpack
        elif framework == "numpy":
            import numpy
            convert = numpy.from_dlpack
        elif framework == "cupy":
            import cupy
            convert = cupy.from_dlpack
        else:
            raise UsageError(f"framework: '{framework}' is not dlpack, torch, numpy or cupy")
        return {k: convert(v) for k, v in sd.items()}

    def materialize(self, task: str | int, targets: Mapping[str, Any], stream: int | None = None,
                    fold_scale: bool = True) -> None:
        """Rebuilds task ``task`` into arrays the caller owns, without allocating: ``targets``
        maps PEFT names (with or without the adapter name, with or without
        ``base_model.model.``) to C-contiguous float32 / float16 / bfloat16 arrays of the
        module's shape in the bundle's memory — for instance a loaded PEFT model's own LoRA
        parameters, which swaps the task in place. Both factors of each named module must be
        given, all of one dtype; torch tensors that require grad are written through
        ``detach()``. On a GPU the work is queued on ``stream`` (a ``cudaStream_t`` as an int,
        e.g. ``torch.cuda.current_stream().cuda_stream``; None: the bundle's own) and this
        returns at once; on the CPU it returns when the arrays are written. ``fold_scale`` as for
        :meth:`state_dict`.
        """
        detached = {k: (v.detach() if getattr(v, "requires_grad", False) else v) for k, v in targets.items()}
        self._b.materialize(task, detached, 0 if stream is None else int(stream), fold_scale)

    def save_adapter(self, task: str | int, out: PathLike, dtype: str = "float32", force: bool = False) -> None:
        """Task ``task`` written as a PEFT adapter folder at ``out`` — byte for byte what
        ``revmerge revert`` writes. A folder under ``/dev/shm`` keeps it in memory for servers
        that load adapters from a path (vLLM, SGLang)."""
        self._b.save_adapter(task, os.fspath(out), str(dtype), force)

    def synchronize(self, stream: int | None = None) -> None:
        """Waits for the work queued on ``stream`` (None: the bundle's own); nothing on the CPU."""
        self._b.synchronize(0 if stream is None else int(stream))

    def close(self) -> None:
        """Frees its memory; arrays it handed out stay valid."""
        self._b.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"revmerge.Bundle({self._b.path!r}, device={self.device!r}: {len(self.tasks)} tasks, {len(self.modules)} modules)"
