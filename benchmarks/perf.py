"""Performance: sampling speed, per-recipe iteration cost and memory, LoRA memory, scaling.

Every figure is measured in the same run; speed-ups are ratios of medians taken in that run
(interleaved where two things are compared, so that load drift hits both alike).

* ``sampling``: images/s of the 2-step student vs. the 8-step teacher on the same network
  (the digits teacher architecture) and batch, under ``torch.inference_mode``; the physical
  limit of the ratio is 4x (NFE 8 vs 2).
* ``recipes``: seconds per training iteration of every recipe at K = 2 on digits, with a
  breakdown from ``torch.profiler.record_function`` labels (``aux``, ``generator_forward``,
  ``generator_backward``, ``optimizer``; nested: ``teacher_forward``, ``student_forward``,
  ``discriminator``, ``fake_score``) and memory: static bytes (weights, optimizer states,
  cached batches), the transient tensor peak of one iteration (allocator events of
  ``torch.profiler(profile_memory=True)``), and, in a fresh subprocess per recipe, the max RSS
  (``resource.getrusage``; on CUDA ``torch.cuda.max_memory_allocated``).
* ``lora_memory``: parameter + gradient + AdamW-state bytes of the LoRA-decoupled 2-step student
  vs. two full copies vs. one student.
* ``turbo_pp``: before / after the iteration optimisations (reference code paths toggled in the
  same process), optional ``torch.compile``, a top-15 op profile (``turbo_profile.txt``) and an
  estimate of the demo's wall time (cache + distillation + evaluation).
* ``scaling``: iteration time and peak memory vs. batch size and image size (8x8, 16x16,
  32x32) for a tiny ResMLP on flattened images driving the Turbo++ losses directly.

Usage::

    python -m benchmarks.perf [--quick] [--out benchmarks/results] [--threads N]

Writes ``perf.json``, ``perf.md`` and ``perf_scaling.png`` (and ``turbo_profile.txt``).
When the shipped digits teacher is missing, a randomly initialised network of the same
architecture stands in (timings and memory do not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile, record_function

from fewstep.distill.config import DistillConfig
from fewstep.distill.trainer import Trainer
from fewstep.presets import preset_path
from fewstep.student.student import Student
from fewstep.utils.config_files import apply_overrides, load_yaml, validate

RECIPES = ("turbo_pp", "regression", "dmd2", "sid", "imagine_flash")
#: trainer phases (top level of an iteration) and the components nested inside them
PHASES = ("aux", "generator_forward", "generator_backward", "optimizer")
COMPONENTS = ("teacher_forward", "student_forward", "discriminator", "fake_score")
#: overrides of the demo preset per recipe (K = 2 everywhere)
RECIPE_OVERRIDES: dict[str, list[str]] = {
    "turbo_pp": [],
    "regression": ["method=regression"],
    "dmd2": ["method=dmd2"],
    "sid": ["method=sid"],
    "imagine_flash": ["method=imagine_flash"],
}
DIGITS_NET = {"type": "resmlp", "data_shape": [1, 8, 8], "hidden": 256, "depth": 4, "emb": 128,
              "num_classes": 10}


@dataclass
class Settings:
    """Sizes of every measurement (``quick()``: seconds, for tests and smoke runs)."""

    batch: int = 128
    sampling_repeats: int = 30
    warmup: int = 3
    iterations: int = 10
    profile_iterations: int = 3
    rounds: int = 3
    cache_size: int = 2048
    scaling_batches: tuple[int, ...] = (32, 64, 128, 256)
    scaling_sizes: tuple[int, ...] = (8, 16, 32)
    scaling_iterations: int = 5
    demo_eval_samples: int = 2000
    compile: bool = True
    subprocess_memory: bool = True

    @classmethod
    def quick(cls) -> Settings:
        return cls(batch=32, sampling_repeats=5, warmup=1, iterations=2, profile_iterations=1,
                   rounds=1, cache_size=256, scaling_batches=(16, 32), scaling_sizes=(8, 16),
                   scaling_iterations=2, demo_eval_samples=200, compile=False,
                   subprocess_memory=False)


# ----------------------------------------------------------------------------- helpers
def median_time(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median wall seconds of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def interleaved_times(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int
                      ) -> dict[str, list[float]]:
    """Wall seconds of each ``fn``, calls interleaved (a, b, a, b, ...) after warm-up."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            out[k].append(time.perf_counter() - t0)
    return out


def tensor_bytes(ts: Iterator[Tensor] | list[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def optimizer_state_bytes(opt: torch.optim.Optimizer | None) -> int:
    if opt is None:
        return 0
    return sum(tensor_bytes(v for v in st.values() if torch.is_tensor(v))
               for st in opt.state.values())


def max_rss_bytes() -> int:
    """Peak resident set size of this process (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return max_rss_bytes()


def profiled(fn: Callable[[], Any], memory: bool = False) -> profile:
    """Run ``fn`` under ``torch.profiler`` (CPU, plus CUDA when available)."""
    acts = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(ProfilerActivity.CUDA)
    with profile(activities=acts, profile_memory=memory) as prof:
        fn()
    return prof


def peak_transient_bytes(prof: profile) -> int:
    """Highest tensor memory allocated above the level at the start of the profile (CPU
    allocator events, or CUDA when present): activations, gradients, temporaries. Frees of
    blocks allocated before the profile are not reported by the profiler, so this is an upper
    bound; callers drop stale gradients first."""
    events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
    want = "CUDA" if torch.cuda.is_available() else "CPU"
    mem = sorted((e.start_ns(), e.nbytes()) for e in events
                 if e.name() == "[memory]" and str(e.device_type()).endswith(want))
    level = peak = 0
    for _, n in mem:
        level += n
        peak = max(peak, level)
    return peak


def label_totals(prof: profile, labels: tuple[str, ...]) -> dict[str, float]:
    """Inclusive CPU milliseconds per ``record_function`` label; a label nested inside the
    same label (e.g. a teacher call inside an instrumented teacher call) is counted once."""
    out = dict.fromkeys(labels, 0.0)
    for e in prof.events():
        if e.name not in out:
            continue
        p, nested = e.cpu_parent, False
        while p is not None:
            if p.name == e.name:
                nested = True
                break
            p = p.cpu_parent
        if not nested:
            out[e.name] += e.cpu_time_total / 1e3
    return out


def _labelled(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(label):
            return fn(*args, **kwargs)
    return wrapper


def instrument_teacher(teacher: nn.Module) -> None:
    """Label every call of the frozen teacher ``teacher_forward`` (covers recipes that call it
    directly; the shared modules label their own calls too, counted once)."""
    teacher.forward = _labelled(teacher.forward, "teacher_forward")  # type: ignore[method-assign]
    if hasattr(teacher, "features"):
        teacher.features = _labelled(teacher.features, "teacher_forward")  # type: ignore


# ----------------------------------------------------------------------------- teacher
def teacher_file(workdir: Path) -> tuple[Path, str]:
    """The shipped digits teacher, or a random network of its architecture saved in
    ``workdir``; returns ``(path, description)``."""
    from fewstep.data.registry import shipped_teacher
    from fewstep.networks.registry import network_denoiser
    from fewstep.teachers.training import save_denoiser

    shipped = shipped_teacher("digits")
    if shipped.is_file():
        return shipped, "shipped digits teacher"
    path = workdir / "teacher_digits_random.safetensors"
    if not path.is_file():
        g = torch.Generator().manual_seed(0)
        den = network_denoiser(DIGITS_NET, null_class=10)
        with torch.no_grad():  # the zero-initialised layers get small weights: non-trivial output
            for p in den.parameters():
                if not p.any():
                    p.copy_(0.02 * torch.randn(p.shape, generator=g))
        save_denoiser(path, den, {"network": DIGITS_NET, "prediction": "velocity",
                                  "time_input": "sigma", "null_class": 10, "data": "digits",
                                  "sampling": {"steps": 8, "shift": 1.0, "cfg_scale": 1.0}})
    return path, "random-init network of the shipped teacher's architecture (no shipped teacher)"


def recipe_config(recipe: str, teacher: Path, cache_dir: Path, s: Settings,
                  extra: list[str] | None = None) -> DistillConfig:
    """The demo preset (Turbo++, K = 2, digits) switched to ``recipe``."""
    base = load_yaml(preset_path("demo"))
    ov = [*RECIPE_OVERRIDES[recipe], f"teacher.path={teacher}", f"cache.dir={cache_dir}",
          f"cache.size={s.cache_size}", f"cache.shard_size={s.cache_size}",
          f"train.batch_size={s.batch}", "student.num_steps=2", *(extra or [])]
    return validate(DistillConfig, apply_overrides(base, ov), "perf config")


def make_trainer(cfg: DistillConfig, run_dir: Path) -> Trainer:
    tr = Trainer(cfg, run_dir, progress=False)
    tr.batches.prepare(False)
    return tr


# ----------------------------------------------------------------------------- (a) sampling
def sampling_throughput(teacher_path: Path, s: Settings) -> dict[str, Any]:
    """Teacher 8-step Euler vs. student 2-step on the same architecture, noise and batch."""
    from fewstep.core.levels import student_sigmas, teacher_sigmas
    from fewstep.core.samplers import euler_sample
    from fewstep.teachers.training import load_denoiser

    den, _ = load_denoiser(teacher_path)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((s.batch, *DIGITS_NET["data_shape"]), generator=g)
    cond = torch.arange(s.batch) % 10
    tsig = teacher_sigmas(8)
    # "lora" samples inside Student.merged() held for the whole run (each step merged once, as
    # a fused LoRA; eval and sample hold it per call); "lora_checked" (a second LoRA student)
    # has no block, so at every step switch each layer checks its merged weight
    kinds = {"decoupled": "decoupled", "shared": "shared", "lora": "lora",
             "lora_checked": "lora"}
    students = {name: Student(den, student_sigmas(2, 8), p, "fresh").eval()
                for name, p in kinds.items()}
    fns: dict[str, Callable[[], Any]] = {
        "teacher_8": lambda: euler_sample(den, noise, cond, tsig),
        "one_forward": lambda: den(noise, torch.ones(s.batch), cond),
    }
    for p, st in students.items():
        fns[f"student_2_{p}"] = (lambda st=st: st.generate(noise, cond, generator=g))
    with torch.inference_mode(), students["lora"].merged():
        times = interleaved_times(fns, s.warmup + 2, s.sampling_repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    out: dict[str, Any] = {"batch": s.batch, "network": DIGITS_NET,
                           "median_seconds": med,
                           "images_per_second": {k: s.batch / v for k, v in med.items()
                                                 if k != "one_forward"}}
    out["ratio"] = {p: med["teacher_8"] / med[f"student_2_{p}"] for p in students}
    # per-pair ratios (same repeat index) are robust to slow load drift
    out["ratio_paired_median"] = {p: statistics.median(
        a / b for a, b in zip(times["teacher_8"], times[f"student_2_{p}"], strict=True))
        for p in students}
    out["sampler_overhead_fraction"] = {
        "teacher_8": 1 - 8 * med["one_forward"] / med["teacher_8"],
        "student_2_shared": 1 - 2 * med["one_forward"] / med["student_2_shared"]}
    out["limit"] = 4.0
    return out


# ----------------------------------------------------------------------------- (b) recipes
def static_bytes(tr: Trainer) -> dict[str, int]:
    """Bytes held across iterations: weights (teacher, student, EMA, aux), optimizer states,
    cached teacher samples / data."""
    def mod(m: nn.Module) -> int:
        return tensor_bytes(list(m.parameters()) + list(m.buffers()))
    out = {"teacher": mod(tr.teacher.denoiser), "student": mod(tr.student), "ema": mod(tr.ema),
           "aux_modules": mod(tr.method),
           "optimizer_states": optimizer_state_bytes(tr.optim.g)
           + optimizer_state_bytes(tr.optim.aux),
           "cache_and_data": tensor_bytes(list((tr.batches.cache or {}).values())
                                          + [t for t in (tr.batches.data or ()) if t is not None])}
    out["total"] = sum(out.values())
    return out


def iteration_breakdown(tr: Trainer, iters: int) -> dict[str, Any]:
    """Profile ``iters`` iterations: ms / iteration per label and the transient memory peak."""
    # the profiler misses frees of blocks allocated before it started: drop the gradients
    # left by the last iteration first (the first iteration would free them)
    for opt in (tr.optim.g, tr.optim.aux):
        if opt is not None:
            opt.zero_grad(set_to_none=True)

    def run() -> None:
        for _ in range(iters):
            with record_function("iteration"):
                tr.train_iteration()
    prof = profiled(run, memory=True)
    tot = label_totals(prof, ("iteration", *PHASES, *COMPONENTS))
    per = {k: v / iters for k, v in tot.items()}
    it = per.pop("iteration")
    phases = {k: per[k] for k in PHASES}
    phases["other"] = max(0.0, it - sum(phases.values()))
    return {"profiled_ms_per_iteration": it, "phases_ms": phases,
            "components_ms": {k: per[k] for k in COMPONENTS},
            "phase_fraction": {k: v / it for k, v in phases.items()} if it > 0 else {},
            "peak_transient_bytes": peak_transient_bytes(prof)}


def recipe_benchmark(recipe: str, teacher: Path, workdir: Path, s: Settings) -> dict[str, Any]:
    """Seconds / iteration, phase breakdown and memory of one recipe (in this process)."""
    rss0 = current_rss_bytes()
    tr = make_trainer(recipe_config(recipe, teacher, workdir / "cache", s), workdir / recipe)
    instrument_teacher(tr.teacher.denoiser)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sec = median_time(tr.train_iteration, s.warmup, s.iterations)
    out: dict[str, Any] = {"recipe": recipe, "batch": s.batch, "num_steps": 2,
                           "seconds_per_iteration": sec,
                           **iteration_breakdown(tr, s.profile_iterations),
                           "static_bytes": static_bytes(tr)}
    out["peak_tensor_bytes"] = out["static_bytes"]["total"] + out["peak_transient_bytes"]
    if torch.cuda.is_available():
        out["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated()
    out["rss_before_bytes"], out["max_rss_bytes"] = rss0, max_rss_bytes()
    return out


def recipe_in_subprocess(recipe: str, teacher: Path, workdir: Path, s: Settings,
                         threads: int | None) -> dict[str, Any]:
    """:func:`recipe_benchmark` in a fresh interpreter, so its max RSS is the recipe's own."""
    out_file = workdir / f"{recipe}.json"
    cmd = [sys.executable, "-m", "benchmarks.perf", "--worker", recipe, "--teacher",
           str(teacher), "--workdir", str(workdir), "--settings", json.dumps(asdict(s))]
    if threads:
        cmd += ["--threads", str(threads)]
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out_file.read_text())


# ----------------------------------------------------------------------------- (c) LoRA
def lora_memory(teacher_path: Path, rank: int = 16) -> dict[str, Any]:
    """Bytes of trainable weights + their gradients + AdamW states (measured after one real
    step) + frozen weights, for a 2-step student in each parameterisation."""
    from fewstep.core.levels import student_sigmas
    from fewstep.teachers.training import load_denoiser

    den, _ = load_denoiser(teacher_path)
    x = torch.randn(4, *DIGITS_NET["data_shape"])
    c = torch.arange(4) % 10
    rows: dict[str, dict[str, int]] = {}
    variants = {"one_student": ("shared", None), "two_full_copies": ("decoupled", None),
                f"lora_r{rank}": ("lora", None), f"lora_r{rank}_all_linear": ("lora", ["re:.*"])}
    for name, (param, targets) in variants.items():
        st = Student(den, student_sigmas(2, 8), param, "fresh", lora_rank=rank,
                     lora_targets=targets)
        train = [p for p in st.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(train, lr=1e-4)
        x0 = st.generate(x, c, generator=torch.Generator().manual_seed(0)).sample
        x0.square().mean().backward()
        opt.step()
        trainable = tensor_bytes(train)
        frozen = tensor_bytes([p for p in st.parameters() if not p.requires_grad])
        adam = optimizer_state_bytes(opt)
        grads = tensor_bytes([p.grad for p in train if p.grad is not None])
        rows[name] = {"trainable": trainable, "frozen": frozen, "adam_states": adam,
                      "grads": grads, "total": trainable + frozen + adam,
                      "total_with_grads": trainable + frozen + adam + grads}
    one = rows["one_student"]["total"]
    one_g = rows["one_student"]["total_with_grads"]
    return {"rank": rank, "targets_default": "fc1, fc2 of every residual block", "bytes": rows,
            "ratio_to_one_student": {k: v["total"] / one for k, v in rows.items()},
            "ratio_to_one_student_with_grads": {k: v["total_with_grads"] / one_g
                                                for k, v in rows.items()},
            "goal": 1.2}


# ----------------------------------------------------------------------------- Turbo++
def compile_works() -> tuple[bool, str]:
    """Whether ``torch.compile`` (inductor) runs here, with the reason when it does not."""
    try:
        f = torch.compile(lambda a: torch.nn.functional.silu(a) * 2)
        f(torch.randn(8))
        return True, "ok"
    except Exception as e:  # any backend failure means "skip"
        return False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def turbo_iteration(teacher: Path, workdir: Path, s: Settings) -> dict[str, Any]:
    """Median seconds per Turbo++ iteration on the demo preset (and with ``train.compile`` where
    it works), interleaved, and the demo's wall time estimated from it."""
    cfg = recipe_config("turbo_pp", teacher, workdir / "cache", s)
    variants: dict[str, Trainer] = {"eager": Trainer(cfg, workdir / "t_eager", progress=False)}
    compiled = {"enabled": False, "reason": "disabled (--quick)"}
    if s.compile:
        ok, why = compile_works()
        compiled = {"enabled": ok, "reason": why}
        if ok:
            ccfg = recipe_config("turbo_pp", teacher, workdir / "cache", s, ["train.compile=true"])
            variants["compiled"] = Trainer(ccfg, workdir / "t_compile", progress=False)
    for name, tr in variants.items():
        tr.batches.prepare(False)
        t0 = time.perf_counter()
        for _ in range(max(3, s.warmup)):
            tr.train_iteration()
        if name == "compiled":
            compiled["first_iterations_seconds"] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(s.rounds):
        for name, tr in variants.items():
            for _ in range(s.iterations):
                t0 = time.perf_counter()
                tr.train_iteration()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds_per_iteration": med, "compile": compiled,
            "demo_estimate": demo_estimate(variants["eager"], med, s)}


def demo_estimate(tr: Trainer, med: dict[str, float], s: Settings) -> dict[str, Any]:
    """The demo's wall time (20 000-sample teacher cache, 800 iterations at batch 128, the
    evaluation of teacher_8, teacher_2 and student_2 on 2 000 samples), from measured parts:
    one cache shard extrapolated, iterations x the measured s/iteration (rescaled to batch 128
    when ``batch`` differs, linearly), and one timed evaluation."""
    from fewstep.distill.engine.teacher_cache import TeacherCache
    from fewstep.evaluation.evaluate import evaluate_samplers

    demo = load_yaml(preset_path("demo"))
    n_cache, iters = demo["cache"]["size"], demo["train"]["iterations"]
    shard = 1000
    cache = TeacherCache(Path(tempfile.mkdtemp()), tr.teacher.denoiser, "perf",
                         tr.teacher.problem.data_shape,
                         lambda n, g: tr.teacher.problem.sample_cond(n, g), lambda i: i,
                         mid_sigma=float(tr.student.sigmas[1]), size=shard, shard_size=shard)
    t0 = time.perf_counter()
    cache._generate_shard(0)
    cache_s = (time.perf_counter() - t0) * n_cache / shard
    t0 = time.perf_counter()
    evaluate_samplers(tr.teacher.problem, ["teacher_8", "teacher_2", "student_2"],
                      tr.teacher.denoiser,
                      tr.teacher.cfg_scale, tr.teacher.shift, tr.ema, s.demo_eval_samples,
                      device=tr.device)
    eval_s = (time.perf_counter() - t0) * demo["eval"]["num_samples"] / s.demo_eval_samples
    scale = demo["train"]["batch_size"] / s.batch
    out: dict[str, Any] = {"cache_seconds": cache_s, "evaluation_seconds": eval_s,
                           "iterations": iters, "batch_rescale": scale}
    for k, v in med.items():
        out[f"total_seconds_{k}"] = cache_s + iters * v * scale + eval_s
        out[f"total_seconds_{k}_cache_reused"] = iters * v * scale + eval_s
    out["goal_seconds"] = 300
    return out


def turbo_profile(teacher: Path, workdir: Path, s: Settings, out_file: Path) -> str:
    """Top-15 ops (self CPU time) of Turbo++ iterations on the demo preset; written to
    ``out_file`` with the per-label totals."""
    tr = make_trainer(recipe_config("turbo_pp", teacher, workdir / "cache", s),
                      workdir / "t_profile")
    instrument_teacher(tr.teacher.denoiser)
    for _ in range(s.warmup):
        tr.train_iteration()
    n = max(1, s.profile_iterations)
    prof = profiled(lambda: [tr.train_iteration() for _ in range(n)])
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    labels = label_totals(prof, (*PHASES, *COMPONENTS))
    text = (f"Turbo++ (demo preset, batch {s.batch}, K = 2), {n} iterations, "
            f"{torch.get_num_threads()} thread(s), torch {torch.__version__}\n\n{table}\n"
            "ms per iteration by label (inclusive):\n"
            + "".join(f"  {k:20s} {v / n:9.2f}\n" for k, v in labels.items()))
    out_file.write_text(text)
    return text


# ----------------------------------------------------------------------------- (d) scaling
def scaling_point(size: int, batch: int, iters: int, hidden: int = 128, depth: int = 2
                  ) -> dict[str, float]:
    """One Turbo++ iteration (discriminator update + generator update, teacher-feature
    discriminator, step-1 regression) of a tiny ResMLP on flattened ``1 x size x size``
    images, driven directly (synthetic batches; no data set of that size is embedded)."""
    from fewstep.core.levels import student_sigmas
    from fewstep.data.problem import Problem
    from fewstep.distill.context import Batch, DistillContext
    from fewstep.distill.methods.turbo_pp import TurboPP
    from fewstep.networks.registry import network_denoiser

    torch.manual_seed(0)
    shape = (1, size, size)
    net = {"type": "resmlp", "data_shape": list(shape), "hidden": hidden, "depth": depth,
           "emb": 64, "num_classes": 10}
    teacher = network_denoiser(net, null_class=10).requires_grad_(False).eval()
    student = Student(teacher, student_sigmas(2, 8), "decoupled", "fresh").train()
    cfg = validate(DistillConfig, {"method": "turbo_pp", "data": "digits"})
    gen = torch.Generator().manual_seed(0)
    prob = Problem("digits", shape, 10)
    ctx = DistillContext(cfg, prob, teacher, 1.0, student, torch.device("cpu"), gen,
                         torch.zeros(2, *shape), torch.zeros(2, dtype=torch.long))
    method = TurboPP(ctx)
    opt_g = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=True)
    opt_d = torch.optim.AdamW(method.aux_parameter_groups(), lr=1e-4, fused=True)

    def draw() -> Batch:
        noise = torch.randn((batch, *shape), generator=gen)
        cond = torch.randint(0, 10, (batch,), generator=gen)
        t = torch.randn((batch, *shape), generator=gen)
        return Batch(noise, cond, teacher_sample=t, teacher_mid=t, real=t, real_cond=cond)

    def step() -> None:
        out = method.aux_loss(draw(), 0)
        assert out is not None
        opt_d.zero_grad(set_to_none=True)
        out[0].backward()
        opt_d.step()
        method.adversary.requires_grad_(False)
        loss, _ = method.generator_loss(draw(), 0)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        method.adversary.requires_grad_(True)

    sec = median_time(step, 1, iters)
    opt_g.zero_grad(set_to_none=True)
    opt_d.zero_grad(set_to_none=True)
    prof = profiled(step, memory=True)
    static = tensor_bytes(list(teacher.parameters()) + list(student.parameters())
                          + list(method.parameters()))
    static += optimizer_state_bytes(opt_g) + optimizer_state_bytes(opt_d)
    peak = peak_transient_bytes(prof)
    return {"size": size, "batch": batch, "seconds_per_iteration": sec,
            "static_bytes": static, "peak_transient_bytes": peak,
            "peak_tensor_bytes": static + peak}


def scaling(s: Settings) -> dict[str, Any]:
    pts = [scaling_point(sz, b, s.scaling_iterations) for sz in s.scaling_sizes
           for b in s.scaling_batches]
    return {"model": "ResMLP hidden 128, depth 2, emb 64 on flattened 1 x S x S images "
                     "(teacher, 2 decoupled student copies, teacher-feature discriminator)",
            "points": pts}


def plot_scaling(sc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for size in sorted({p["size"] for p in sc["points"]}):
        pts = sorted((p for p in sc["points"] if p["size"] == size), key=lambda p: p["batch"])
        bs = [p["batch"] for p in pts]
        a.plot(bs, [1e3 * p["seconds_per_iteration"] for p in pts], "o-", label=f"{size}x{size}")
        b.plot(bs, [p["peak_tensor_bytes"] / 2**20 for p in pts], "o-", label=f"{size}x{size}")
    for ax, yl in ((a, "ms / iteration"), (b, "peak tensor memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3, which="both")
        ax.legend(title="image")
    fig.suptitle("Turbo++ iteration, tiny ResMLP (CPU)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- report
def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = [f"# fewstep performance ({env['device']}, {env['threads']} thread(s), torch "
             f"{env['torch']})", "", f"Teacher: {res['teacher']}. Load: {env['load']}.", ""]
    sp = res["sampling"]
    lines += [f"## Sampling throughput (batch {sp['batch']}, inference mode)", "",
              "| sampler | ms / batch | images / s | speed-up vs teacher_8 |", "|---|---|---|---|"]
    lines.append(f"| teacher_8 | {1e3 * sp['median_seconds']['teacher_8']:.2f} | "
                 f"{sp['images_per_second']['teacher_8']:.0f} | 1.00 |")
    for p, r in sp["ratio"].items():
        k = f"student_2_{p}"
        lines.append(f"| {k} | {1e3 * sp['median_seconds'][k]:.2f} | "
                     f"{sp['images_per_second'][k]:.0f} | {r:.2f} |")
    lines += ["", "Limit 4x (NFE 8 vs 2); goal >= 3.9x.", ""]
    rc = res["recipes"]
    cols = (*PHASES, "other")
    b = res["settings"]["batch"]
    lines += [f"## Training iteration per recipe (K = 2, digits, batch {b})",
              "", "| recipe | s / it | " + " | ".join(f"{c} %" for c in cols)
              + " | teacher fwd ms | student fwd ms | disc ms | fake score ms | static MiB | "
              "transient peak MiB | max RSS MiB |", "|---" * (len(cols) + 9) + "|"]
    for name, r in rc.items():
        fr = r["phase_fraction"]
        comp = r["components_ms"]
        lines.append(f"| {name} | {r['seconds_per_iteration']:.3f} | "
                     + " | ".join(f"{100 * fr.get(c, 0):.0f}" for c in cols)
                     + f" | {comp['teacher_forward']:.1f} | {comp['student_forward']:.1f} | "
                     f"{comp['discriminator']:.1f} | {comp['fake_score']:.1f} | "
                     f"{_mib(r['static_bytes']['total'])} | {_mib(r['peak_transient_bytes'])} | "
                     f"{_mib(r['max_rss_bytes'])} |")
    lines += ["", "Phase shares and component times are from the profiled iterations (profiler "
              "overhead included); s / it is un-profiled. Max RSS: " + res["rss_note"], ""]
    lm = res["lora_memory"]
    lines += ["## Student memory (2 steps: weights + AdamW states)", "",
              "| student | trainable MiB | frozen MiB | AdamW MiB | total MiB | x one student |"
              " x one (with grads) |", "|---|---|---|---|---|---|---|"]
    for k, v in lm["bytes"].items():
        lines.append(f"| {k} | {_mib(v['trainable'])} | {_mib(v['frozen'])} | "
                     f"{_mib(v['adam_states'])} | {_mib(v['total'])} | "
                     f"{lm['ratio_to_one_student'][k]:.2f} | "
                     f"{lm['ratio_to_one_student_with_grads'][k]:.2f} |")
    lines += ["", "Goal: LoRA-decoupled <= 1.2x one student.", ""]
    tb = res["turbo_pp"]
    lines += ["## Turbo++ iteration", "", "| variant | s / it |", "|---|---|"]
    for k, v in tb["seconds_per_iteration"].items():
        lines.append(f"| {k} | {v:.3f} |")
    de = tb["demo_estimate"]
    lines += ["", f"torch.compile: {tb['compile']['reason']}.", "",
              f"Demo estimate (cache {de['cache_seconds']:.0f} s + {de['iterations']} iterations"
              f" + evaluation {de['evaluation_seconds']:.0f} s): "
              + ", ".join(f"{k.removeprefix('total_seconds_')} {v:.0f} s"
                          for k, v in de.items() if k.startswith("total_seconds_"))
              + f" (goal {de['goal_seconds']} s).", ""]
    lines += ["## Scaling", "", res["scaling"]["model"] + ".", "",
              "![scaling](perf_scaling.png)", "",
              "| image | batch | ms / it | peak tensor MiB |", "|---|---|---|---|"]
    for p in res["scaling"]["points"]:
        lines.append(f"| {p['size']}x{p['size']} | {p['batch']} | "
                     f"{1e3 * p['seconds_per_iteration']:.1f} | {_mib(p['peak_tensor_bytes'])} |")
    return "\n".join(lines) + "\n"


def environment() -> dict[str, Any]:
    try:
        load = "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return {"torch": torch.__version__, "python": platform.python_version(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load": load,
            "machine": platform.machine()}


def run(out: Path, s: Settings, threads: int | None = None,
        parts: tuple[str, ...] = ("sampling", "recipes", "lora", "turbo", "scaling")
        ) -> dict[str, Any]:
    """Run the selected measurements; write ``perf.json`` / ``perf.md`` / ``perf_scaling.png``
    when all parts ran. Returns the results."""
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"settings": asdict(s), "environment": environment()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher, desc = teacher_file(work)
        res["teacher"] = desc
        if "sampling" in parts:
            res["sampling"] = sampling_throughput(teacher, s)
        if "recipes" in parts:
            res["recipes"] = {}
            for r in RECIPES:
                if s.subprocess_memory:
                    res["recipes"][r] = recipe_in_subprocess(r, teacher, work, s, threads)
                else:
                    res["recipes"][r] = recipe_benchmark(r, teacher, work, s)
            res["rss_note"] = ("resource.getrusage max RSS of a fresh subprocess per recipe "
                               "(includes the interpreter and torch)" if s.subprocess_memory
                               else "max RSS of this process so far (not per recipe)")
        if "lora" in parts:
            res["lora_memory"] = lora_memory(teacher)
        if "turbo" in parts:
            res["turbo_pp"] = turbo_iteration(teacher, work, s)
            turbo_profile(teacher, work, s, out / "turbo_profile.txt")
        if "scaling" in parts:
            res["scaling"] = scaling(s)
    res["environment"]["load_after"] = environment()["load"]
    if all(k in res for k in ("sampling", "recipes", "lora_memory", "turbo_pp", "scaling")):
        (out / "perf.json").write_text(json.dumps(res, indent=1, default=float))
        (out / "perf.md").write_text(markdown(res))
        plot_scaling(res["scaling"], out / "perf_scaling.png")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds; smoke test)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--teacher", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:  # one recipe in a fresh process (see recipe_in_subprocess)
        d = json.loads(args.settings)
        s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        r = recipe_benchmark(args.worker, args.teacher, args.workdir, s)
        (args.workdir / f"{args.worker}.json").write_text(json.dumps(r, default=float))
        return
    s = Settings.quick() if args.quick else Settings()
    s.compile = s.compile and not args.no_compile
    t0 = time.perf_counter()
    res = run(args.out, s, args.threads)
    print(markdown(res))
    print(f"wrote {args.out}/perf.json, perf.md, perf_scaling.png, turbo_profile.txt "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
