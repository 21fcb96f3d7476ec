"""What the trainer hands a method, and what a method declares about its batches and its
auxiliary optimizer: :class:`Batch`, :class:`DataNeeds`, :class:`AuxUpdates`,
:class:`DistillContext`. Below both the methods (:mod:`fewstep.distill.methods`) and their shared
parts (:mod:`fewstep.distill.parts`), so neither imports the other for these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fewstep.core.denoiser import Denoiser
from fewstep.data.problem import Problem
from fewstep.distill.config import DistillConfig, RealSource
from fewstep.student.student import Student
from fewstep.teachers.base import LoadedTeacher

#: named loss terms of one update (device tensors)
Logs = dict[str, Tensor]


@dataclass
class Batch:
    """One training batch (all on the training device).

    Attributes:
        noise: ``(B, ...)`` student input at ``sigma = 1``.
        cond: conditioning for ``noise`` (labels ``(B,)`` or ``None``).
        teacher_sample: the teacher's N-step sample from the same ``noise`` (if cached).
        teacher_mid: the teacher's x0 estimate nearest ``sigma_2`` from the same ``noise``.
        real: "real" samples for a discriminator (teacher samples or data), ``(B, ...)``.
        real_cond: their conditioning.
    """

    noise: Tensor
    cond: Any
    teacher_sample: Tensor | None = None
    teacher_mid: Tensor | None = None
    real: Tensor | None = None
    real_cond: Any = None


@dataclass(frozen=True)
class DataNeeds:
    """What a method's batches carry beyond noise and condition.

    Attributes:
        teacher_pairs: ``(noise, teacher sample from that noise)`` pairs from the teacher cache
            (``Batch.noise`` is then the cached noise, ``teacher_sample`` / ``teacher_mid``
            are set).
        real: where ``Batch.real`` comes from: the teacher cache, fresh teacher samples, or the
            data set's train split; ``None``: no real samples.
    """

    teacher_pairs: bool = False
    real: RealSource | None = None

    @property
    def teacher_cache(self) -> bool:
        """The run needs the teacher-sample cache."""
        return self.teacher_pairs or self.real == "teacher_cache"


@dataclass
class AuxUpdates:
    """A method's optimizer layout beyond the student's AdamW (``train.lr``, ``grad_clip``).

    Attributes:
        aux_groups: AdamW parameter groups ``{"params": [...], "lr": ...}`` of the auxiliary
            networks (one optimizer); empty: no aux update.
        aux_per_generator: aux updates (each on a fresh batch) before every generator update.
        aux_clip: gradient-norm clip of the aux optimizer.
    """

    aux_groups: list[dict[str, Any]] = field(default_factory=list)
    aux_per_generator: int = 1
    aux_clip: float = 10.0


@dataclass
class DistillContext:
    """Everything a method may read. ``generator`` drives all randomness inside the losses."""

    cfg: DistillConfig
    problem: Problem
    teacher: Denoiser
    teacher_cfg_scale: float
    student: Student
    device: torch.device
    generator: torch.Generator
    example: Tensor
    example_cond: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_run(cls, cfg: DistillConfig, teacher: LoadedTeacher, student: Student,
                device: torch.device, generator: torch.Generator) -> DistillContext:
        """The context of a run: the loaded teacher's denoiser, guidance and problem, and an
        example batch of two (zeros, two conditions drawn from the global RNG) for building
        networks that size themselves on the teacher's features."""
        p = teacher.problem
        example = torch.zeros((2, *p.data_shape), device=device)
        example_cond = p.cond_map(p.sample_cond(2, device=device))
        return cls(cfg, p, teacher.denoiser, teacher.cfg_scale, student, device, generator,
                   example, example_cond)

    def randn_like(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self.generator).to(x.device, x.dtype)

    def rand(self, n: int) -> Tensor:
        return torch.rand(n, generator=self.generator).to(self.device)


__all__ = ["AuxUpdates", "Batch", "DataNeeds", "DistillContext", "Logs"]
