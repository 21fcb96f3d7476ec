"""Validate ``fewstep plan`` against measured memory on a mid-size Z-Image-shaped model.

``python -m benchmarks.memory [--out DIR] [--iters N] [--runs lora,decoupled]``

Builds (once, in ``--work``, default a temp folder) a randomly initialised ``ZImagePipeline``
whose transformer has
the Z-Image architecture at mid size (:data:`MID_TRANSFORMER`, ~110 M parameters; the tiny
VAE and text encoder of the test stack), then runs each recipe in its own subprocess on the
CPU: Turbo++ (teacher-trajectory step-1 loss, GAN on teacher features, end-to-end) with a
per-step LoRA student and with a decoupled student, ``N`` iterations each, float32, no
gradient checkpointing. Per run it records

* ``base_copies``: how many distinct tensor storages hold the frozen base's weights (the
  teacher's first attention projection, found by value among every tensor the trainer holds:
  modules, EMA, optimizer state), counted right after setup;
* ``measured_peak_gib``: peak resident memory minus the interpreter's after imports: the
  kernel's high-water mark (``VmHWM``) is reset once the imports are done (``/proc/self/
  clear_refs``), so import-time transients do not count, and the baseline is the resident size
  (``VmRSS``) at that moment; large allocations are returned to the OS at once
  (``MALLOC_MMAP_THRESHOLD_``) so the peak follows live tensors rather than allocator reuse;
* ``plan_peak_gib``: ``fewstep plan``'s total for the configured row, same config, 1 process;
* ``iter_seconds`` (the fastest iteration after the first) and ``passes_seconds``: the sum,
  over every network call the second iteration made (student steps, teacher and fake-score
  transformer calls), of the same call replayed alone (fastest of two: forward, plus backward
  where the call built a graph); ``time_ratio`` = their quotient (the loop's overhead: data,
  optimizer, EMA, adapter switching, logging).

Writes ``DIR/memory.json`` (``runs``: one entry per run) and ``DIR/memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Z-Image transformer at mid size (the real one: dim 3840, 30 layers, 2 + 2 refiners)
MID_TRANSFORMER: dict[str, Any] = {
    "all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 768,
    "n_layers": 10, "n_refiner_layers": 2, "n_heads": 12, "n_kv_heads": 12, "norm_eps": 1e-5,
    "qk_norm": True, "cap_feat_dim": 16, "rope_theta": 256.0, "t_scale": 1000.0,
    "axes_dims": [16, 24, 24], "axes_lens": [256, 64, 64]}
PROMPTS = "a red cat\na photo of a big blue dog\nthe green tree\ntwo birds on a wire\n"
RUNS = {"lora": ["student.parameterization=lora", "student.lora_rank=16"],
        "decoupled": ["student.parameterization=decoupled"]}
GIB = 1024 ** 3


def build_stack(root: Path) -> Path:
    """The mid-size pipeline folder (built once; reused if present)."""
    folder = root / "zimage"
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import ZImageTransformer2DModel

    from fewstep.testing import build_tiny_zimage_pipeline
    from fewstep.testing.tiny_pipelines import init_pad_tokens

    pipe = build_tiny_zimage_pipeline(seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tr = ZImageTransformer2DModel(**MID_TRANSFORMER)
        init_pad_tokens(tr, generator=torch.Generator().manual_seed(0))
    pipe.transformer = tr.eval()
    pipe.register_modules(transformer=pipe.transformer)
    pipe.save_pretrained(folder)
    (root / "prompts.txt").write_text(PROMPTS)
    return folder


def run_config(root: Path, name: str, iters: int) -> Any:
    from fewstep.distill.config import DistillConfig
    from fewstep.presets import preset_path
    from fewstep.utils.config_files import load_config

    return load_config(DistillConfig, preset_path("tiny_zimage"), [
        f"teacher.pretrained={root / 'zimage'}", f"teacher.prompts={root / 'prompts.txt'}",
        "teacher.resolution=32", "teacher.max_sequence_length=32", "teacher.dtype=float32",
        f"cache.dir={root / 'cache'}", "cache.size=4", "cache.shard_size=4",
        "cache.batch_size=2", f"train.iterations={iters}", "train.batch_size=2",
        'train.mixed_precision="no"', "train.gradient_checkpointing=false",
        "gan.layers=[-1,-4]", *RUNS[name]])


# --------------------------------------------------------------------------------------------
# measurements inside a run
# --------------------------------------------------------------------------------------------
def _all_tensors(obj: Any, seen: set[int], out: list[Any], depth: int = 0) -> None:
    """Every tensor reachable from ``obj`` through modules, optimizers, dicts, lists and plain
    attributes (a few levels deep)."""
    import torch
    from torch import nn

    if id(obj) in seen or depth > 4:
        return
    seen.add(id(obj))
    if torch.is_tensor(obj):
        out.append(obj)
    elif isinstance(obj, nn.Module):
        out.extend(obj.parameters())
        out.extend(obj.buffers())
        for v in vars(obj).values():
            if not isinstance(v, dict) or v is obj.__dict__.get("_modules"):
                _all_tensors(v, seen, out, depth + 1)
    elif isinstance(obj, torch.optim.Optimizer):
        for st in obj.state.values():
            out.extend(t for t in st.values() if torch.is_tensor(t))
    elif isinstance(obj, dict):
        for v in obj.values():
            _all_tensors(v, seen, out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _all_tensors(v, seen, out, depth + 1)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("fewstep"):
        for v in vars(obj).values():
            _all_tensors(v, seen, out, depth + 1)


def base_copies(trainer: Any) -> int:
    """Distinct storages holding the value of the teacher's first attention ``to_q`` weight."""
    import torch

    ref = trainer.teacher.denoiser.transformer.layers[0].attention.to_q.weight.detach()
    tensors: list[Any] = []
    _all_tensors(trainer, set(), tensors)
    storages = set()
    for t in tensors:
        t = getattr(t, "_local_tensor", t)
        if t.shape == ref.shape and t.dtype == ref.dtype and torch.equal(t.detach(), ref):
            storages.add(t.untyped_storage().data_ptr())
    return len(storages)


class PassRecorder:
    """Records every network call of one iteration -- student steps as ``Student.forward``
    (so a replay runs the step's own adapter), every other transformer call (teacher, fake
    score) as the transformer's ``forward`` -- then replays each alone."""

    def __init__(self, student: Any, modules: list[Any]) -> None:
        self.student, self.modules = student, modules
        self.calls: list[tuple[Any, bool, tuple, dict]] = []
        self.handles: list[Any] = []
        self._in_student = 0

    def __enter__(self) -> PassRecorder:
        import torch

        def pre(m: Any, args: tuple, kwargs: dict) -> None:
            if m is not self.student and self._in_student:
                return  # the transformer call inside a student step: recorded as the step
            det = _detach_tree((args, kwargs))
            self.calls.append((m, torch.is_grad_enabled(), det[0], det[1]))
            if m is self.student:
                self._in_student += 1

        def post(m: Any, args: tuple, out: Any) -> None:
            self._in_student -= 1

        self.handles = [m.register_forward_pre_hook(pre, with_kwargs=True)
                        for m in [self.student, *self.modules]]
        self.handles.append(self.student.register_forward_hook(post))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()

    def replay_seconds(self, repeats: int = 2) -> tuple[float, int, int]:
        """``(seconds, forwards, backwards)``: every recorded call alone (min of ``repeats``)."""
        import torch

        total, fwd, bwd = 0.0, 0, 0
        for m, grad, args, kwargs in self.calls:
            best = float("inf")
            did_bwd = False
            for _ in range(repeats):
                a, k = _clone_tree((args, kwargs))
                t0 = time.perf_counter()
                with torch.set_grad_enabled(grad):
                    out = m(*a, **k)
                    outs = [t for t in _flat(out) if torch.is_tensor(t) and t.requires_grad]
                    if outs:
                        torch.autograd.backward(
                            [sum(o.float().sum() for o in outs)])
                        did_bwd = True
                best = min(best, time.perf_counter() - t0)
                for p in m.parameters():
                    p.grad = None
            total += best
            fwd += 1
            bwd += int(did_bwd)
        return total, fwd, bwd


def _flat(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [y for v in x for y in _flat(v)]
    if isinstance(x, dict):
        return [y for v in x.values() for y in _flat(v)]
    if hasattr(x, "to_tuple"):
        return _flat(x.to_tuple())
    return [x]


def _detach_tree(x: Any) -> Any:
    import torch

    if torch.is_tensor(x):
        return (x.detach(), x.requires_grad)
    if isinstance(x, (list, tuple)):
        return type(x)(_detach_tree(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach_tree(v) for k, v in x.items()}
    return x


def _clone_tree(x: Any) -> Any:
    import torch

    if isinstance(x, tuple) and len(x) == 2 and torch.is_tensor(x[0]) and isinstance(x[1], bool):
        t = x[0].clone()
        return t.requires_grad_(x[1] and t.is_floating_point())
    if isinstance(x, (list, tuple)):
        return type(x)(_clone_tree(v) for v in x)
    if isinstance(x, dict):
        return {k: _clone_tree(v) for k, v in x.items()}
    return x


def _transformers(trainer: Any) -> list[Any]:
    from diffusers import ZImageTransformer2DModel

    out, seen = [], set()
    for owner in (trainer.teacher.denoiser, trainer.student, trainer.method):
        for m in owner.modules():
            if isinstance(m, ZImageTransformer2DModel) and id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    return out


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert m is not None, field
    return int(m.group(1))


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark; returns the current resident size (bytes)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """Peak resident size (bytes) since the last :func:`reset_peak_rss`."""
    return _status_kib("VmHWM") * 1024


def child(name: str, root: Path, out: Path, iters: int) -> None:
    import torch

    from fewstep.app.plan import build_plan
    from fewstep.distill.trainer import Trainer

    torch.set_num_threads(1)
    cfg = run_config(root, name, iters)
    plan = build_plan(cfg, 1)  # meta models: imports diffusers / transformers parts
    row = next(r for r in plan.rows if r.configured)
    baseline = reset_peak_rss()
    tr = Trainer(cfg, root / f"run_{name}", progress=False)
    copies = base_copies(tr)
    tr.batches.prepare(False)
    times = []
    rec = PassRecorder(tr.student, _transformers(tr))
    for i in range(iters):
        t0 = time.perf_counter()
        if i == 1:
            with rec:
                tr.train_iteration()
        else:
            tr.train_iteration()
        times.append(time.perf_counter() - t0)
    peak = peak_rss()
    passes, nf, nb = rec.replay_seconds()
    # the same statistic on both sides (the machine is shared): the fastest iteration after
    # the first, the fastest replay of each pass
    it = min(times[1:]) if len(times) > 1 else times[0]
    params = sum(p.numel() for p in tr.teacher.denoiser.parameters())
    res = {"name": name, "base_copies": copies, "plan_peak_gib": row.total / GIB,
           "measured_peak_gib": (peak - baseline) / GIB,
           "plan_over_measured": row.total / max(1, peak - baseline),
           "plan_rows": {"weights": row.weights / GIB, "grads": row.grads / GIB,
                         "adam": row.adam / GIB, "ema": row.ema / GIB,
                         "activations": row.activations / GIB, "data": row.data / GIB},
           "teacher_params": params, "iter_seconds": it, "iter_times": times,
           "passes_seconds": passes, "passes": {"forwards": nf, "backwards": nb},
           "time_ratio": it / passes if passes else None,
           "baseline_rss_gib": baseline / GIB}
    out.write_text(json.dumps(res, indent=1))


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fewstep_memory",
                    help="scratch folder: the mid-size pipeline (~0.4 GB), caches, runs")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--runs", default="lora,decoupled")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = args.out.resolve()
    root = args.work.resolve()
    if args.child:
        child(args.child, root, root / f"{args.child}.json", args.iters)
        return
    root.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    build_stack(root)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    runs = []
    for name in args.runs.split(","):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "benchmarks.memory", "--work", str(root),
                        "--iters", str(args.iters), "--child", name], check=True, env=env)
        res = json.loads((root / f"{name}.json").read_text())
        res["wall_seconds"] = time.perf_counter() - t0
        runs.append(res)
        print(f"{name}: base_copies {res['base_copies']}, plan {res['plan_peak_gib']:.3f} GiB, "
              f"measured {res['measured_peak_gib']:.3f} GiB (plan/measured "
              f"{res['plan_over_measured']:.2f}), iteration {res['iter_seconds']:.2f} s vs "
              f"network passes {res['passes_seconds']:.2f} s (ratio {res['time_ratio']:.2f})",
              flush=True)
    payload = {"model": MID_TRANSFORMER, "iters": args.iters, "runs": runs}
    (out / "memory.json").write_text(json.dumps(payload, indent=1))
    lines = ["| run | base copies | plan GiB | measured GiB | plan/measured | s/iter | "
             "passes s | ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['name']} | {r['base_copies']} | {r['plan_peak_gib']:.3f} | "
                     f"{r['measured_peak_gib']:.3f} | {r['plan_over_measured']:.2f} | "
                     f"{r['iter_seconds']:.2f} | {r['passes_seconds']:.2f} | "
                     f"{r['time_ratio']:.2f} |")
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
