"""Noise-level (sigma) schedules for the teacher and the K-step student.

All schedules are 1-d float tensors that start at ``sigma = 1`` (pure noise), decrease
strictly, and (for the teacher's Euler sampler) end at 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fewstep.path import shift_sigma


def teacher_sigmas(num_steps: int, shift: float = 1.0) -> Tensor:
    """``num_steps + 1`` levels: ``shift(linspace(1, 0, N + 1))``.

    With ``num_steps=8, shift=3`` this is Z-Image Turbo's schedule
    ``1, .9545, .9, .8333, .75, .6429, .5, .3, 0``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift).float()


def student_sigmas(num_steps: int, teacher_steps: int = 8, shift: float = 1.0,
                   custom: list[float] | None = None) -> Tensor:
    """The K input noise levels ``sigma_1 = 1 > sigma_2 > ... > sigma_K > 0`` of the student.

    Default: every ``teacher_steps // K``-th level of the teacher's own schedule (METHODS §2), so
    for K = 2 and the 8-step teacher ``sigma_2`` is the teacher's level after 4 steps. ``custom``
    overrides; it must start at 1 and decrease strictly inside (0, 1].
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
