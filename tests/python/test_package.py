"""The Python package against the command line and the files it writes: every task rebuilt by
Bundle bitwise equal to `revmerge revert`, DLPack without copies, errors as exceptions.

Run by ctest with the built package on PYTHONPATH (tests/python/CMakeLists.txt)."""
import json
import os
import pathlib
import shutil
import sys
import tempfile
import unittest

from peers import require

# What the caller's environment says before the package is imported (it may choose for itself).
CORETYPE_BEFORE = os.environ.get("OPENBLAS_CORETYPE")
require("numpy", "torch", "safetensors", "revmerge")
import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import revmerge  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
ADAPTERS = sorted((ROOT / "examples" / "adapters").iterdir())


def setUpModule():
    global WORK, BUNDLES
    WORK = pathlib.Path(tempfile.mkdtemp(prefix="revmerge-python-"))
    # One bundle of each kind the store writes: the paper's RMM and the budgeted auto store.
    BUNDLES = {"rmm": WORK / "rmm", "auto": WORK / "auto"}
    revmerge.merge(*ADAPTERS, out=BUNDLES["rmm"], method="rmm", basis=2, device="cpu", quiet=True)
    revmerge.merge(*ADAPTERS, out=BUNDLES["auto"], method="auto", storage=0.4, device="cpu", quiet=True)


def tearDownModule():
    shutil.rmtree(WORK)


def reverted(bundle, task):
    out = WORK / f"reverted-{bundle.name}-{task}"
    if not out.exists():
        revmerge.revert(bundle, task=task, out=out, device="cpu", quiet=True)
    return load_file(str(out / "adapter_model.safetensors"))


class CommandLine(unittest.TestCase):
    def test_merge_wrote_bundles_that_inspect_reads(self):
        for kind, path in BUNDLES.items():
            report = revmerge.inspect(path)
            self.assertEqual(len(report["manifest"]["tasks"]), len(ADAPTERS), kind)

    def test_info_devices_and_compress_return_the_json_reports(self):
        self.assertEqual(revmerge.info(ADAPTERS[0])["config"]["r"], 16)
        self.assertIn("cpu", revmerge.devices()["backends"])
        # A "fine-tune": the tiny model with one task's delta folded in (revert --full).
        tiny = ROOT / "examples" / "tiny-llama"
        revmerge.revert(BUNDLES["rmm"], task="qa", out=WORK / "qa-full", full=True, base=tiny, quiet=True)
        report = revmerge.compress(base=tiny, model=WORK / "qa-full", rank=16, out=WORK / "qa-compressed")
        self.assertTrue((WORK / "qa-compressed" / "adapter_config.json").exists())
        self.assertGreater(len(report["modules"]), 0)

    def test_compare_returns_the_json_report(self):
        report = revmerge.compare(*ADAPTERS[:3], basis=[1, 2], methods="ties", device="cpu")
        self.assertEqual(report["tasks"], [p.name for p in ADAPTERS[:3]])
        labels = [row["method"] for row in report["rows"]]
        self.assertIn("rmm P=1", labels)
        self.assertIn("rmm P=2", labels)

    def test_options_start_from_the_defaults_each_call(self):
        # A flag given once must not stick to the next command line in the same process.
        out = WORK / "twice"
        revmerge.merge(*ADAPTERS[:2], out=out, method="task_arithmetic", quiet=True)
        with self.assertRaises(revmerge.IoError):  # exists, and --force is not repeated
            revmerge.merge(*ADAPTERS[:2], out=out, method="task_arithmetic")
        revmerge.merge(*ADAPTERS[:2], out=out, method="task_arithmetic", force=True, quiet=True)

    def test_ctrl_c_stops_a_merge_and_leaves_nothing(self):
        import signal
        import subprocess
        import threading
        import time
        make = os.environ.get("REVMERGE_MAKE_ADAPTERS")  # bench/: LLM-shaped adapters (ctest sets it)
        if not make:
            self.skipTest("REVMERGE_MAKE_ADAPTERS (the bench tool making 7b-shaped adapters) not given")
        inputs = WORK / "b7"
        subprocess.run([make, "--model", "llama-7b", "-n", "8", "-r", "64", "--layers", "2", "--out", str(inputs)],
                       check=True, capture_output=True)
        out = WORK / "b7-bundle"
        # Python's own handler, whatever this process inherited (a shell's background job ignores SIGINT).
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        self.addCleanup(signal.signal, signal.SIGINT, previous)
        timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
        t0 = time.perf_counter()
        timer.start()
        try:
            revmerge.merge(*sorted(inputs.glob("task-*")), out=out, basis=4, device="cpu", quiet=True)
        except KeyboardInterrupt:
            stopped = time.perf_counter() - t0
            self.assertLess(stopped, 5.0)
            self.assertEqual([p.name for p in WORK.iterdir() if p.name.startswith("b7-bundle")], [])
            revmerge.merge(*ADAPTERS[:2], out=WORK / "after-ctrl-c", basis=1, quiet=True)  # the engine runs on
            return
        finally:
            timer.cancel()
            shutil.rmtree(inputs)
        try:  # the merge finished first: let the signal land before the next test
            time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        self.skipTest("the merge finished before the signal (a faster machine than the test expects)")

    def test_help_and_usage_errors(self):
        self.assertIn("--storage", revmerge.run("merge", "--help"))
        with self.assertRaisesRegex(revmerge.UsageError, "did you mean 'merge'"):
            revmerge.run("merg")
        with self.assertRaisesRegex(revmerge.UsageError, "--methd"):
            revmerge.merge(*ADAPTERS[:2], out=WORK / "never", methd="ties")
        self.assertFalse((WORK / "never").exists())

    def test_python_m_revmerge_runs_the_command_line(self):
        import subprocess
        r = subprocess.run([sys.executable, "-m", "revmerge", "info", str(ADAPTERS[0])],
                           capture_output=True, text=True, env=os.environ)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("PEFT LoRA adapter", r.stdout)
        r = subprocess.run([sys.executable, "-m", "revmerge", "merg"], capture_output=True, text=True,
                           env=os.environ)
        self.assertEqual(r.returncode, 2)
        self.assertIn("did you mean 'merge'", r.stderr)


    def test_the_blas_kernels_are_chosen_as_the_program_chooses(self):
        # Chosen for the CPU at import (unless the caller chose), the choice not left in the
        # environment for other libraries.
        self.assertEqual(os.environ.get("OPENBLAS_CORETYPE"), CORETYPE_BEFORE)
        flags = pathlib.Path("/proc/cpuinfo").read_text().split()
        if "avx2" in flags and "fma" in flags:
            self.assertNotEqual(revmerge.blas_kernels().lower(), "prescott")
        self.assertIn(revmerge.blas_kernels(), revmerge.run("devices"))
        self.assertIn('"cpu"', revmerge.run("devices", "--json"))
        self.assertNotIn('"cpu"', revmerge.run("devices"))  # --json did not stick


class ResidentBundle(unittest.TestCase):
    def test_every_task_bitwise_equal_to_revert(self):
        for kind, path in BUNDLES.items():
            with revmerge.Bundle(path, device="cpu") as b:
                self.assertEqual(b.tasks, [p.name for p in ADAPTERS])
                self.assertGreater(b.memory_bytes, 0)
                for task in b.tasks:
                    want = reverted(path, task)
                    got = b.state_dict(task, dtype="float32", framework="numpy")
                    self.assertEqual(sorted(got), sorted(want), (kind, task))
                    for k, v in want.items():
                        self.assertEqual(got[k].dtype, np.float32)
                        np.testing.assert_array_equal(got[k].view(np.uint32), v.view(np.uint32),
                                                      err_msg=f"{kind} {task} {k}")

    def test_sixteen_bit_outputs_are_the_f32_rounded_once(self):
        import torch
        with revmerge.Bundle(BUNDLES["auto"]) as b:
            f32 = b.state_dict(1, dtype="float32", framework="torch")
            for dtype in (torch.bfloat16, torch.float16):
                half = b.state_dict(1, dtype=dtype, framework="torch")
                for k, v in f32.items():
                    self.assertEqual(half[k].dtype, dtype)
                    self.assertTrue(torch.equal(half[k], v.to(dtype)), (dtype, k))

    def test_no_copy_between_revmerge_and_torch_or_numpy(self):
        import torch
        with revmerge.Bundle(BUNDLES["rmm"]) as b:
            sd = b.state_dict("qa", dtype="float32")
            key = next(iter(sd))
            t = torch.from_dlpack(sd[key])
            n = np.from_dlpack(sd[key])
            self.assertEqual(t.data_ptr(), n.ctypes.data)
            # A second consumer of the same object sees the same memory, not a copy.
            self.assertEqual(torch.from_dlpack(sd[key]).data_ptr(), t.data_ptr())
            half = b.state_dict("qa", dtype="bfloat16")
            self.assertEqual(torch.from_dlpack(half[key]).dtype, torch.bfloat16)
        # The arrays outlive the bundle: they own their memory.
        self.assertTrue(torch.isfinite(t).all())

    def test_materialize_writes_into_the_callers_arrays(self):
        import torch
        with revmerge.Bundle(BUNDLES["auto"]) as b:
            want = b.state_dict("code", dtype="float32", adapter_name="default", framework="torch")
            targets = {k: torch.full_like(v, float("nan")).requires_grad_() for k, v in want.items()}
            pointers = {k: v.data_ptr() for k, v in targets.items()}
            b.materialize("code", targets)
            for k, v in targets.items():
                self.assertEqual(v.data_ptr(), pointers[k])
                self.assertTrue(torch.equal(v.detach(), want[k]), k)
            bf16 = {k: torch.empty_like(v, dtype=torch.bfloat16) for k, v in want.items()}
            b.materialize(2, bf16)
            self.assertTrue(all(torch.equal(bf16[k], v.to(torch.bfloat16))
                                for k, v in b.state_dict(2, framework="torch", adapter_name="default").items()))

    def test_save_adapter_writes_what_revert_writes(self):
        with revmerge.Bundle(BUNDLES["auto"]) as b:
            out = WORK / "saved-math"
            b.save_adapter("math", out)
            want = WORK / "reverted-auto-math"
            reverted(BUNDLES["auto"], "math")
            self.assertEqual((out / "adapter_model.safetensors").read_bytes(),
                             (want / "adapter_model.safetensors").read_bytes())
            self.assertEqual(json.loads((out / "adapter_config.json").read_text()),
                             json.loads((want / "adapter_config.json").read_text()))
            with self.assertRaises(revmerge.IoError):
                b.save_adapter("math", out)  # exists: only with force
            b.save_adapter("math", out, force=True)

    def test_bad_requests_raise_with_the_engines_message(self):
        with revmerge.Bundle(BUNDLES["rmm"]) as b:
            with self.assertRaisesRegex(revmerge.UsageError, "task 'nope' is not in .*tasks: chat"):
                b.state_dict("nope")
            with self.assertRaisesRegex(revmerge.UsageError, "task 99 is outside"):
                b.state_dict(99)
            with self.assertRaisesRegex(revmerge.UsageError, "dtype: unknown dtype 'int8'"):
                b.state_dict(0, dtype="int8")
            with self.assertRaisesRegex(revmerge.UsageError, "module 'x' is not in"):
                b.state_dict(0, modules=["x"])
            sd = b.state_dict(0, dtype="float32", framework="numpy")
            one = {k: v for k, v in sd.items() if ".lora_A." in k}
            with self.assertRaisesRegex(revmerge.UsageError, "lora_A target but not its lora_B"):
                b.materialize(0, dict(list(one.items())[:1]))
            k, v = next(iter(one.items()))
            with self.assertRaisesRegex(revmerge.UsageError, "must be"):
                b.materialize(0, {k: v.T.copy()})
            with self.assertRaisesRegex(revmerge.UsageError, "not contiguous"):
                b.materialize(0, {k: np.asfortranarray(v) if v.shape[0] > 1 else v[:, ::2]})
        with self.assertRaisesRegex(revmerge.UsageError, "closed"):
            b.state_dict(0)
        with self.assertRaisesRegex(revmerge.UsageError, "device: 'gpu' is not"):
            revmerge.Bundle(BUNDLES["rmm"], device="gpu")
        with self.assertRaisesRegex(revmerge.Error, "nowhere"):
            revmerge.Bundle(WORK / "nowhere")

    def test_without_the_scale_for_a_model_loaded_with_the_tasks_own_config(self):
        import torch
        from peft import PeftModel, set_peft_model_state_dict
        from transformers import AutoModelForCausalLM

        # Two example tasks, one given lora_alpha 32 at rank 16: its scale is 2.
        scaled = WORK / "scaled-qa"
        shutil.copytree(ADAPTERS[ADAPTERS.index(ROOT / "examples/adapters/qa")], scaled)
        config = json.loads((scaled / "adapter_config.json").read_text())
        config["lora_alpha"] = 2 * config["r"]
        (scaled / "adapter_config.json").write_text(json.dumps(config))
        bundle = WORK / "scaled"
        revmerge.merge(scaled, ROOT / "examples/adapters/math", out=bundle, basis=1, device="cpu", quiet=True)
        with revmerge.Bundle(bundle) as b:
            module = b.modules[0]
            self.assertEqual(b.scale("scaled-qa", module), 2.0)
            self.assertEqual(b.scale("math", module), 1.0)
            folded = b.state_dict("scaled-qa", dtype="float32", framework="torch")
            unfolded = b.state_dict("scaled-qa", dtype="float32", fold_scale=False, framework="torch")
            for k, v in folded.items():
                want = v / 2 if ".lora_B." in k else v
                self.assertTrue(torch.equal(unfolded[k], want), k)
            # The model a server loaded from the task's own folder applies the scale itself.
            base = lambda: AutoModelForCausalLM.from_pretrained(ROOT / "examples/tiny-llama", dtype=torch.float32)
            tokens = torch.arange(24).reshape(2, 12)
            model = PeftModel.from_pretrained(base(), scaled).eval()
            set_peft_model_state_dict(model, unfolded)
            revmerge.revert(bundle, task="scaled-qa", out=WORK / "scaled-qa-reverted", quiet=True)
            reference = PeftModel.from_pretrained(base(), WORK / "scaled-qa-reverted").eval()
            with torch.no_grad():
                self.assertTrue(torch.equal(model(tokens).logits, reference(tokens).logits))

    def test_a_subset_of_modules(self):
        with revmerge.Bundle(BUNDLES["rmm"]) as b:
            names = b.modules[:2]
            sd = b.state_dict("chat", dtype="float32", modules=names, framework="numpy")
            self.assertEqual(len(sd), 4)
            rank, fan_in, fan_out = b.shape(names[0])
            self.assertEqual(sd[f"base_model.model.{names[0]}.lora_A.weight"].shape, (rank, fan_in))
            self.assertEqual(sd[f"base_model.model.{names[0]}.lora_B.weight"].shape, (fan_out, rank))


if __name__ == "__main__":
    unittest.main(verbosity=2)
