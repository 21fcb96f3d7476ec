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
data's classes (see :mod:`fewstep.metrics.features`). Every sampler's entry records the
``feature_space`` it was scored in.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fewstep.data.problem import Problem
from fewstep.denoiser import Denoiser
from fewstep.distill.student import Student
from fewstep.errors import ConfigError
from fewstep.metrics.features import DIGITS_FEATURES, FeatureSpace, resolve_feature_space
from fewstep.samplers import euler_sample
from fewstep.schedules import teacher_sigmas

SAMPLER_RE = re.compile(r"^(teacher|student)_(\d+)$")


@dataclass(frozen=True)
class SamplerSpec:
    """``kind`` is ``teacher`` or ``student``; ``steps`` >= 1."""

    kind: str
    steps: int

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.steps}"


def parse_sampler(name: str) -> SamplerSpec:
    """``"teacher_8"`` -> ``SamplerSpec("teacher", 8)``; a clear error otherwise."""
    m = SAMPLER_RE.match(name.strip())
    if not m:
        raise ConfigError(f"unknown sampler {name!r}: use teacher_<N> or student_<K> (N, K >= 1)")
    steps = int(m.group(2))
    if steps < 1:
        raise ConfigError(f"sampler {name!r}: steps must be >= 1")
    return SamplerSpec(m.group(1), steps)


def eval_noise(problem: Problem, n: int, seed: int, device: torch.device | str = "cpu"
               ) -> tuple[Tensor, Tensor | None]:
    """Fixed evaluation noise ``(n, *data_shape)`` and balanced labels (``i % C``) or ``None``."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *problem.data_shape), generator=g).to(device)
    cond = None if problem.num_classes == 0 else \
        (torch.arange(n) % problem.num_classes).to(device)
    return noise, cond


@torch.no_grad()
def run_sampler(spec: SamplerSpec, noise: Tensor, cond: Any, teacher: Denoiser,
                teacher_w: float = 1.0, teacher_shift: float = 1.0,
                student: Student | None = None, batch_size: int = 2000,
                seed: int = 0) -> tuple[Tensor, float, int]:
    """Generate from ``noise``; returns ``(samples, seconds_per_image, nfe)``."""
    if spec.kind == "student":
        if student is None:
            raise ConfigError(f"sampler {spec.name} needs a student checkpoint")
        if spec.steps > student.num_steps:
            raise ConfigError(f"sampler {spec.name}: the student has {student.num_steps} steps")
    outs = []
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for i in range(0, noise.shape[0], batch_size):
        e = noise[i:i + batch_size]
        c = None if cond is None else cond[i:i + batch_size]
        if spec.kind == "teacher":
            outs.append(euler_sample(teacher, e, c, teacher_sigmas(spec.steps, teacher_shift),
                                     teacher_w).sample)
        else:
            assert student is not None
            outs.append(student.generate(e, c, generator=g, num_steps=spec.steps).sample)
    secs = (time.perf_counter() - t0) / noise.shape[0]
    per_step = 2 if (spec.kind == "teacher" and teacher_w != 1.0 and cond is not None) else 1
    return torch.cat(outs), secs, spec.steps * per_step


def evaluate_samplers(problem: Problem, samplers: Sequence[str], teacher: Denoiser,
                      teacher_w: float = 1.0, teacher_shift: float = 1.0,
                      student: Student | None = None, num_samples: int = 2000,
                      seed: int = 1234, classifier: torch.nn.Module | None = None,
                      device: torch.device | str = "cpu", features: str | FeatureSpace = "auto"
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, Tensor]]:
    """Metrics (see module docstring) and samples for each named sampler, from the same noise.

    ``features``: the feature space of the image metrics (``auto``, ``pixels``,
    ``digits_classifier``, ``classifier:FILE``, ``builder:pkg.mod:fn``; see
    :func:`fewstep.metrics.features.resolve_feature_space`); a given ``classifier`` overrides
    it (the legacy digits path)."""
    from fewstep.metrics.evaluate import evaluate_digits, evaluate_images, evaluate_toy
    from fewstep.metrics.fid import extract_features, frechet_distance
    from fewstep.metrics.toy import sliced_wasserstein

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
    if legacy:
        classifier = fs.net
        f_teacher = extract_features(classifier, teacher_ref)
    elif not problem.is_toy:
        f_teacher = fs.features(teacher_ref)
    results: dict[str, dict[str, float]] = {}
    samples: dict[str, Tensor] = {}
    for spec in specs:
        if spec == t8:  # deterministic and already run from this noise: reuse it
            x, secs, nfe = same
        else:
            x, secs, nfe = run_sampler(spec, noise, cond, teacher, teacher_w, teacher_shift,
                                       student, seed=seed + 7)
        samples[spec.name] = x
        if problem.is_toy:
            m = evaluate_toy(x, ref, problem.name)
            m["swd_vs_teacher"] = sliced_wasserstein(
                x, teacher_ref, 256, 2.0, torch.Generator().manual_seed(0))
        elif legacy:
            m = evaluate_digits(x, cond, ref, classifier)
            m["fid_vs_teacher"] = frechet_distance(f_teacher, extract_features(classifier, x))
        else:
            m = evaluate_images(x, cond, ref, fs)
            m["fd_vs_teacher"] = frechet_distance(f_teacher, fs.features(x))
        m["mse_vs_teacher"] = float((x - teacher_same).pow(2).mean())
        m["nfe"] = nfe
        m["seconds_per_image"] = secs
        results[spec.name] = {k: float(v) for k, v in m.items()}
        results[spec.name]["feature_space"] = fs.name  # type: ignore[assignment]
    return results, samples
