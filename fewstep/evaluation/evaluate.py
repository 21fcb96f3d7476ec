"""Evaluate samplers from the same noise: the teacher at N steps, the student at K steps.

A sampler is named ``teacher_<N>`` (the teacher's N-step Euler sampler, with its own CFG
scale and shift) or ``student_<K>`` (the student's first K steps; K = the student's own step
count unless it was trained for fewer). Every sampler draws from the *same* noise and the same
class labels, so grids and paired distances compare like with like.

Metrics per sampler (digits): ``fid``, ``precision``, ``recall``, ``density``, ``coverage``,
``class_accuracy`` against held-out data; ``fid_vs_teacher``: FID to the 8-step teacher's
samples from an *independent* noise draw (so ``teacher_8``'s own value is the two-seed floor);
``mse_vs_teacher``: mean squared distance to the teacher's sample from the same noise; ``nfe``
and ``seconds_per_image``. 2-D toys report ``swd``, ``mode_coverage``, ``quality`` and
``swd_vs_teacher`` instead of the image metrics.

Your own images (and any ``features`` other than the digits classifier) report ``fd`` (Fréchet
distance in the chosen feature space, default raw pixels), ``swd`` (sliced Wasserstein in
pixel space), ``precision`` / ``recall`` / ``density`` / ``coverage`` (same feature space),
``fd_vs_teacher``, and ``class_accuracy`` only when the feature space has a classifier for the
data's classes (see :mod:`fewstep.evaluation.features`). Every sampler's entry records the
``feature_space`` it was scored in.

Noise correction (:mod:`fewstep.core.noise_correction`): every sampler starts at
``sigma = 1``; for a zero-terminal-SNR epsilon-prediction teacher / student the first step is
noise-corrected by default (``noise_correction=None``). A name suffix forces it:
``student_2_nc`` (on) or ``student_2_naive`` (off), so both can be compared from the same noise.

Timing (:func:`time_samplers`) is measured like for like: every sampler runs on the same batch
(the first ``timing_batch`` noise rows), one warm-up round is excluded, then ``repeats`` rounds
call the samplers in turn (interleaved, so a busy machine slows them alike), each for about the
same number of network calls; ``seconds_per_image`` is the median wall time per image and
``cpu_seconds_per_image`` (CPU runs) the median CPU time of this process per image.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fewstep.core.denoiser import Denoiser
from fewstep.core.levels import teacher_sigmas
from fewstep.core.samplers import check_finite, euler_sample, student_sample
from fewstep.data.problem import Problem
from fewstep.errors import ConfigError
from fewstep.evaluation.features import DIGITS_FEATURES, FeatureSpace, resolve_feature_space
from fewstep.student.student import Student

SAMPLER_RE = re.compile(r"^(teacher|student)_(\d+)(?:_(nc|naive))?$")
_NC_SUFFIX = {None: None, "nc": True, "naive": False}


@dataclass(frozen=True)
class SamplerSpec:
    """``kind`` is ``teacher`` or ``student``; ``steps`` >= 1; ``noise_correction``: ``None``
    (the model's default), ``True`` (name suffix ``_nc``) or ``False`` (``_naive``)."""

    kind: str
    steps: int
    noise_correction: bool | None = None

    @property
    def name(self) -> str:
        suffix = {None: "", True: "_nc", False: "_naive"}[self.noise_correction]
        return f"{self.kind}_{self.steps}{suffix}"


def parse_sampler(name: str) -> SamplerSpec:
    """``"teacher_8"`` -> ``SamplerSpec("teacher", 8)``, ``"student_2_naive"`` ->
    ``SamplerSpec("student", 2, False)``; a clear error otherwise."""
    m = SAMPLER_RE.match(name.strip())
    if not m:
        raise ConfigError(f"unknown sampler {name!r}: use teacher_<N> or student_<K> (N, K >= 1), "
                          "optionally with _nc / _naive (noise correction on / off)")
    steps = int(m.group(2))
    if steps < 1:
        raise ConfigError(f"sampler {name!r}: steps must be >= 1")
    return SamplerSpec(m.group(1), steps, _NC_SUFFIX[m.group(3)])


def eval_noise(problem: Problem, n: int, seed: int, device: torch.device | str = "cpu"
               ) -> tuple[Tensor, Tensor | None]:
    """Fixed evaluation noise ``(n, *data_shape)`` and balanced labels (``i % C``) or ``None``."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *problem.data_shape), generator=g).to(device)
    cond = None if problem.num_classes == 0 else \
        (torch.arange(n) % problem.num_classes).to(device)
    return noise, cond


def _check_student(spec: SamplerSpec, student: Student | None) -> None:
    if spec.kind == "student":
        if student is None:
            raise ConfigError(f"sampler {spec.name} needs a student checkpoint")
        if spec.steps > student.num_steps:
            raise ConfigError(f"sampler {spec.name}: the student has {student.num_steps} steps")


def _nfe(spec: SamplerSpec, teacher_w: float, cond: Any, corrected: bool) -> int:
    """Network calls per sample: CFG doubles the teacher's; noise correction adds one call at
    ``sigma = 1`` (the second level) for each guided branch."""
    per_step = 2 if (spec.kind == "teacher" and teacher_w != 1.0 and cond is not None) else 1
    return spec.steps * per_step + (per_step if corrected else 0)


@torch.no_grad()
def _generate(spec: SamplerSpec, noise: Tensor, cond: Any, teacher: Denoiser, teacher_w: float,
              teacher_shift: float, student: Student | None,
              g: torch.Generator | None, check: bool = False) -> Tensor:
    """One sampler pass; ``check``: NaN / Inf at any step is a
    :class:`~fewstep.errors.NonFiniteError` naming the sampler and the first bad step."""
    if spec.kind == "teacher":
        traj = euler_sample(teacher, noise, cond, teacher_sigmas(spec.steps, teacher_shift),
                            teacher_w, noise_correction=spec.noise_correction)
    else:
        traj = student_sample(student, noise, cond, noise_correction=spec.noise_correction,
                              generator=g, num_steps=spec.steps)
    if check:
        check_finite(traj, spec.name)
    return traj.sample


def _merged(spec: SamplerSpec, student: Student | None) -> contextlib.AbstractContextManager:
    """A student sampler runs inside :meth:`Student.merged` (a LoRA student merges each step
    once per call, like a fused LoRA; the timing includes that merge)."""
    if spec.kind == "student" and student is not None:
        return student.merged()
    return contextlib.nullcontext()


def _corrected(spec: SamplerSpec, teacher: Denoiser, student: Student | None) -> bool:
    from fewstep.core.noise_correction import is_epsilon_model, resolve_noise_correction

    if spec.kind == "teacher":
        den = teacher
    else:
        assert student is not None  # _check_student
        den = student.step_denoiser(0)
    return is_epsilon_model(den) and resolve_noise_correction(den, spec.noise_correction)


@torch.no_grad()
def run_sampler(spec: SamplerSpec, noise: Tensor, cond: Any, teacher: Denoiser,
                teacher_w: float = 1.0, teacher_shift: float = 1.0,
                student: Student | None = None, batch_size: int = 2000,
                seed: int = 0) -> tuple[Tensor, float, int]:
    """Generate from ``noise``; returns ``(samples, seconds_per_image, nfe)``.

    ``seconds_per_image`` here is the wall time of this one pass (warm-up included); use
    :func:`time_samplers` to compare samplers."""
    _check_student(spec, student)
    outs = []
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    with _merged(spec, student):
        for i in range(0, noise.shape[0], batch_size):
            e = noise[i:i + batch_size]
            c = None if cond is None else cond[i:i + batch_size]
            outs.append(_generate(spec, e, c, teacher, teacher_w, teacher_shift, student, g,
                                  check=True))
    secs = (time.perf_counter() - t0) / noise.shape[0]
    return torch.cat(outs), secs, _nfe(spec, teacher_w, cond, _corrected(spec, teacher, student))


@torch.no_grad()
def time_samplers(specs: Sequence[SamplerSpec], noise: Tensor, cond: Any, teacher: Denoiser,
                  teacher_w: float = 1.0, teacher_shift: float = 1.0,
                  student: Student | None = None, batch_size: int = 256, repeats: int = 7,
                  warmup: int = 1, seed: int = 0) -> dict[str, dict[str, float]]:
    """Seconds per image of each sampler, measured like for like (module docstring).

    Every sampler runs on the same batch (``noise[:batch_size]``); ``warmup`` untimed rounds,
    then ``repeats`` interleaved rounds. In a round each sampler runs ``ceil(max_nfe / nfe)``
    times back to back, so every timed unit makes about the same number of network calls (a
    short call is not favoured by the scheduler of a busy machine). Returns per sampler the
    median wall time ``seconds_per_image`` and, on CPU, the median process CPU time
    ``cpu_seconds_per_image`` (other tenants do not count; with N threads it sums them).
    CUDA is synchronised around each unit."""
    n = min(batch_size, noise.shape[0])
    e = noise[:n]
    c = None if cond is None else cond[:n]
    for spec in specs:
        _check_student(spec, student)
    cuda = noise.device.type == "cuda"
    nfes = {spec.name: _nfe(spec, teacher_w, c, _corrected(spec, teacher, student))
            for spec in specs}
    most = max(nfes.values())
    reps = {name: -(-most // v) for name, v in nfes.items()}

    def unit(spec: SamplerSpec) -> tuple[float, float]:
        g = torch.Generator().manual_seed(seed)
        if cuda:
            torch.cuda.synchronize(noise.device)
        t0, c0 = time.perf_counter(), time.process_time()
        with _merged(spec, student):
            for _ in range(reps[spec.name]):
                _generate(spec, e, c, teacher, teacher_w, teacher_shift, student, g)
        if cuda:
            torch.cuda.synchronize(noise.device)
        k = reps[spec.name] * n
        return (time.perf_counter() - t0) / k, (time.process_time() - c0) / k

    for _ in range(warmup):
        for spec in specs:
            unit(spec)
    wall: dict[str, list[float]] = {spec.name: [] for spec in specs}
    cpu: dict[str, list[float]] = {spec.name: [] for spec in specs}
    for _ in range(max(1, repeats)):
        for spec in specs:
            w, p = unit(spec)
            wall[spec.name].append(w)
            cpu[spec.name].append(p)
    nan = float("nan")
    return {name: {"seconds_per_image": statistics.median(wall[name]),
                   "cpu_seconds_per_image": nan if cuda else statistics.median(cpu[name])}
            for name in wall}


#: nearest neighbours of the PRDC metrics (precision, recall, density, coverage)
PRDC_K = 5


def check_heldout_for_metrics(problem: Problem, field: str = "--data") -> None:
    """Image metrics compare with the held-out images, PRDC with ``PRDC_K`` neighbours among
    them: fewer than ``PRDC_K + 1`` held-out images is a one-line error, before any work."""
    if problem.is_toy or not getattr(problem, "is_user_data", False):
        return
    n = len(problem.image_data().x_heldout)
    if n < PRDC_K + 1:
        raise ConfigError(f"{field}: {n} held-out images; the image metrics (precision / recall "
                          f"with k = {PRDC_K} neighbours) need at least {PRDC_K + 1}: add "
                          "images, raise data.heldout (the held-out fraction) or give a "
                          "held-out folder")


def metrics_json(metrics: dict[str, Any]) -> str:
    """The metrics as strict JSON: values that are undefined (NaN: e.g. CPU seconds on CUDA,
    timing skipped) are written as ``null``, never as the non-JSON ``NaN``."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(metrics), indent=2, allow_nan=False)


def evaluate_samplers(problem: Problem, samplers: Sequence[str], teacher: Denoiser,
                      teacher_w: float = 1.0, teacher_shift: float = 1.0,
                      student: Student | None = None, num_samples: int = 2000,
                      seed: int = 1234, classifier: torch.nn.Module | None = None,
                      device: torch.device | str = "cpu", features: str | FeatureSpace = "auto",
                      timing: bool = True, timing_batch: int = 256, timing_repeats: int = 7
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, Tensor]]:
    """Metrics (see module docstring) and samples for each named sampler, from the same noise.

    ``features``: the feature space of the image metrics (``auto``, ``pixels``,
    ``digits_classifier``, ``classifier:FILE``, ``builder:pkg.mod:fn``; see
    :func:`fewstep.evaluation.features.resolve_feature_space`); a given ``classifier`` overrides
    it (the legacy digits path). ``timing=False`` skips :func:`time_samplers`
    (``seconds_per_image`` is then NaN)."""
    from fewstep.evaluation.fid import extract_features, frechet_distance
    from fewstep.evaluation.scores import evaluate_digits, evaluate_images, evaluate_toy
    from fewstep.evaluation.toy_metrics import sliced_wasserstein

    check_heldout_for_metrics(problem)
    fs = features if isinstance(features, FeatureSpace) else \
        resolve_feature_space(problem, features, device)
    if classifier is not None:
        fs = FeatureSpace(DIGITS_FEATURES, classifier, classifier)
    # the digits classifier on data with its classes: the original digits metrics ("fid")
    legacy = fs.name == DIGITS_FEATURES and fs.classifier is not None and not problem.is_toy

    specs = [parse_sampler(s) for s in samplers]
    noise, cond = eval_noise(problem, num_samples, seed, device)
    ref, _ = problem.split("heldout")
    ref = ref.to(device)
    # the teacher's 8-step samples from independent noise: the "teacher distribution"
    noise_b, cond_b = eval_noise(problem, num_samples, seed + 1, device)
    t8 = SamplerSpec("teacher", 8)
    teacher_ref, _, _ = run_sampler(t8, noise_b, cond_b, teacher, teacher_w, teacher_shift)
    same = run_sampler(t8, noise, cond, teacher, teacher_w, teacher_shift)
    teacher_same = same[0]
    # the digits classifier's own features (legacy: the feature space's net is the classifier)
    digits_net = fs.net if legacy else None
    if digits_net is not None:
        f_teacher = extract_features(digits_net, teacher_ref)
    elif not problem.is_toy:
        f_teacher = fs.features(teacher_ref)
    results: dict[str, dict[str, Any]] = {}
    samples: dict[str, Tensor] = {}
    nan = float("nan")
    timings = time_samplers(specs, noise, cond, teacher, teacher_w, teacher_shift, student,
                            timing_batch, timing_repeats, seed=seed + 7) if timing else \
        {spec.name: {"seconds_per_image": nan, "cpu_seconds_per_image": nan} for spec in specs}
    for spec in specs:
        if spec == t8:  # deterministic and already run from this noise: reuse it
            x, _, nfe = same
        else:
            x, _, nfe = run_sampler(spec, noise, cond, teacher, teacher_w, teacher_shift,
                                    student, seed=seed + 7)
        samples[spec.name] = x
        if problem.is_toy:
            m = evaluate_toy(x, ref, problem.name)
            m["swd_vs_teacher"] = sliced_wasserstein(
                x, teacher_ref, 256, 2.0, torch.Generator().manual_seed(0))
        elif digits_net is not None:
            m = evaluate_digits(x, cond, ref, digits_net)
            m["fid_vs_teacher"] = frechet_distance(f_teacher, extract_features(digits_net, x))
        else:
            m = evaluate_images(x, cond, ref, fs)
            m["fd_vs_teacher"] = frechet_distance(f_teacher, fs.features(x))
        m["mse_vs_teacher"] = float((x - teacher_same).pow(2).mean())
        m["nfe"] = nfe
        m.update(timings[spec.name])
        results[spec.name] = {k: float(v) for k, v in m.items()}
        results[spec.name]["feature_space"] = fs.name
    return results, samples
