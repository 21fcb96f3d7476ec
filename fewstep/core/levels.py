"""Noise levels (sigmas) of the teacher's sampler and of the K-step student.

All level sequences are 1-d float tensors that start at ``sigma = 1`` (pure noise), decrease
strictly, and (for the teacher's Euler sampler) end at 0.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fewstep.core.path import shift_sigma


def teacher_sigmas(num_steps: int, shift: float = 1.0) -> Tensor:
    """``num_steps + 1`` levels: ``shift(linspace(1, 0, N + 1))``.

    With ``num_steps=8, shift=3`` this is Z-Image Turbo's schedule
    ``1, .9545, .9, .8333, .75, .6429, .5, .3, 0``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    levels = shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)
    return torch.as_tensor(levels).float()  # a Tensor already (Tensor in, Tensor out)


def student_sigmas(num_steps: int, teacher_steps: int = 8, shift: float = 1.0,
                   custom: list[float] | None = None) -> Tensor:
    """The K input noise levels ``sigma_1 = 1 > sigma_2 > ... > sigma_K > 0`` of the student.

    Default: every ``teacher_steps // K``-th level of the teacher's own schedule
    (docs/methods.md §2), so for K = 2 and the 8-step teacher ``sigma_2`` is the teacher's level
    after 4 steps. ``custom`` overrides; it must start at 1 and decrease strictly inside (0, 1].
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if custom is not None:
        s = torch.tensor(custom, dtype=torch.float32)
        if len(custom) != num_steps:
            raise ValueError(f"custom sigmas has {len(custom)} entries, expected {num_steps}")
        if abs(custom[0] - 1.0) > 1e-6 or not bool((s[1:] < s[:-1]).all()) or s[-1] <= 0:
            raise ValueError("custom sigmas must start at 1 and decrease strictly in (0, 1]: "
                             f"{custom}")
        return s
    if teacher_steps % num_steps == 0:
        return teacher_sigmas(teacher_steps, shift)[:-1:teacher_steps // num_steps].clone()
    return teacher_sigmas(num_steps, shift)[:-1].clone()


def pipeline_sigmas(scheduler: Any, num_steps: int, image_seq_len: int | None = None
                    ) -> tuple[Tensor, float]:
    """The N-step levels a diffusers pipeline's own ``__call__`` uses, on our flow path.

    Returns ``(sigmas, noise_scale)``: ``N + 1`` decreasing levels ending at 0, and the factor
    that turns the pipeline's initial standard noise into our first input ``x_{sigma_0}``.

    * Flow matching (``FlowMatch*`` schedulers): ``set_timesteps(sigmas=linspace(1, 1/N, N),
      mu=calculate_shift(image_seq_len))`` as Z-Image / Flux / SD3 pipelines call it (the
      scheduler applies its ``shift`` or, with ``use_dynamic_shifting``, the exponential shift
      ``mu``); its ``sigmas`` (terminal 0 appended) are ours; ``noise_scale = 1``.
    * VP (``alphas_cumprod``): ``set_timesteps(N)`` (its ``timestep_spacing``: leading,
      trailing, linspace); level ``k`` is ``s / (a + s)`` with ``a = sqrt(abar_t)``,
      ``s = sqrt(1 - abar_t)``; the last level is 0 (exact for DDIM with
      ``set_alpha_to_one``). The pipeline starts from ``x_vp = noise``, i.e.
      ``x_{sigma_0} = noise / (a_0 + s_0)``: ``noise_scale = 1 / (a_0 + s_0)``.
    """
    sched = copy.deepcopy(scheduler)
    cfg = sched.config
    if hasattr(sched, "alphas_cumprod") and not type(sched).__name__.startswith("FlowMatch"):
        sched.set_timesteps(num_steps)
        ac = torch.as_tensor(sched.alphas_cumprod, dtype=torch.float64)
        ab = ac[torch.as_tensor(sched.timesteps).long()]
        a, s = ab.sqrt(), (1.0 - ab).clamp_min(0).sqrt()
        sig = torch.cat([s / (a + s), torch.zeros(1, dtype=torch.float64)])
        return sig.float(), float(1.0 / (a[0] + s[0]))
    mu = None
    if cfg.get("use_dynamic_shifting", False):
        if image_seq_len is None:
            raise ValueError("a dynamically shifted scheduler needs image_seq_len")
        x1, y1 = cfg.get("base_image_seq_len", 256), cfg.get("base_shift", 0.5)
        x2, y2 = cfg.get("max_image_seq_len", 4096), cfg.get("max_shift", 1.15)
        m = (y2 - y1) / (x2 - x1)
        mu = image_seq_len * m + (y1 - m * x1)
    base = np.linspace(1.0, 1.0 / num_steps, num_steps)
    sched.set_timesteps(sigmas=list(base), mu=mu)
    sig = torch.as_tensor(sched.sigmas, dtype=torch.float64).flatten()
    if float(sig[-1]) != 0.0:
        sig = torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
    return sig.float(), 1.0


def resolve_teacher_sigmas(levels: str | list[float], num_steps: int, shift: float,
                           scheduler: Any = None, image_seq_len: int | None = None
                           ) -> tuple[Tensor, float]:
    """``teacher.levels`` -> ``(N + 1 levels, noise_scale)``: ``uniform`` is
    :func:`teacher_sigmas`, ``pipeline`` is :func:`pipeline_sigmas` (needs the scheduler), a
    list is taken as is."""
    if isinstance(levels, list):
        return torch.tensor(levels, dtype=torch.float32), 1.0
    if levels == "uniform":
        return teacher_sigmas(num_steps, shift), 1.0
    if scheduler is None:
        raise ValueError("teacher.levels: 'pipeline' needs a diffusers scheduler")
    return pipeline_sigmas(scheduler, num_steps, image_seq_len)


def student_sigmas_from_levels(levels: Tensor, num_steps: int) -> Tensor:
    """The K student input levels from the teacher's own ``N + 1`` levels (e.g.
    ``LoadedTeacher.sigmas``): every ``N // K``-th level, the first set to 1 (pure noise: a
    pipeline schedule may start just below it). ``N`` not divisible by ``K``: uniform levels."""
    n = int(levels.numel()) - 1
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if n % num_steps != 0:
        return teacher_sigmas(num_steps)[:-1].clone()
    s = levels[:-1:n // num_steps].clone().float()
    s[0] = 1.0
    return s
