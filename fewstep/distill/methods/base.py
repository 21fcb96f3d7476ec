"""What every distillation recipe implements, and what the trainer hands it.

A recipe is an ``nn.Module`` holding its *auxiliary* trainable parts (discriminator, fake score
network); the student and the frozen teacher live in :class:`DistillContext`. Per iteration the
trainer calls :meth:`DistillMethod.aux_loss` ``train.aux_ratio`` times (each on a fresh batch,
stepping the aux optimizer), then :meth:`DistillMethod.generator_loss` once (stepping the
student optimizer). The budget ``train.iterations`` counts generator updates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fewstep.data.problem import Problem
from fewstep.denoiser import Denoiser
from fewstep.distill.config import DistillConfig
from fewstep.distill.student import Student

Logs = dict[str, Tensor]


def cat_cond(a: Any, b: Any) -> Any:
    """Concatenate two conditioning batches along the batch axis.

    ``None`` + ``None`` is ``None`` (unconditional); tensors (labels ``(B,)``, embeddings
    ``(B, ...)``) use ``torch.cat``; other objects use their type's ``cat([a, b])`` (e.g.
    :class:`~fewstep.diffusers_adapters.zimage.PromptEmbeds`, whose rows may be padded to
    different lengths).
    """
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError("cannot concatenate a conditioned and an unconditional batch")
    if torch.is_tensor(a):
        return torch.cat([a, b])
    cat = getattr(type(a), "cat", None)
    if cat is None:
        raise TypeError(f"{type(a).__name__} conditioning has no cat(); give it a static "
                        "cat(items) or pass tensors")
    return cat([a, b])


def where_cond(mask: Tensor, a: Any, b: Any) -> Any:
    """Row ``i`` of ``a`` where ``mask[i]`` else of ``b`` (``mask (B,)`` bool; e.g. condition
    dropout to the null condition). Tensors use ``torch.where``; other objects are indexed per
    row and joined with their type's ``cat``."""
    if torch.is_tensor(a):
        return torch.where(mask.reshape(-1, *([1] * (a.ndim - 1))), a, b)
    rows = [a[i] if bool(m) else b[i] for i, m in enumerate(mask.tolist())]
    return type(a).cat(rows)


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


@dataclass
class DistillContext:
    """Everything a recipe may read. ``generator`` drives all randomness inside the losses."""

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

    def randn_like(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self.generator).to(x.device, x.dtype)

    def rand(self, n: int) -> Tensor:
        return torch.rand(n, generator=self.generator).to(self.device)


class DistillMethod(nn.Module, ABC):
    """Base class of a recipe. Subclasses set the class attributes below."""

    #: the batch needs the teacher's sample from the same noise (regression-type losses)
    needs_teacher_pairs: bool = False
    #: the batch needs "real" samples for a discriminator
    needs_real: bool = False

    def __init__(self, ctx: DistillContext) -> None:
        super().__init__()
        self._ctx = [ctx]  # not a submodule: the student and teacher are owned by the trainer

    @property
    def ctx(self) -> DistillContext:
        return self._ctx[0]

    @abstractmethod
    def generator_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        """Scalar loss for the student at generator update ``step`` and its named terms."""

    def aux_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs] | None:
        """Scalar loss for the auxiliary modules, or ``None`` when the recipe has none."""
        return None

    def aux_parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups (``{"params": [...], "lr": ...}``) for the auxiliary modules."""
        return []

    @torch.no_grad()
    def student_samples(self, batch: Batch) -> Tensor:
        """The student's final outputs for ``batch`` without gradient (for aux updates)."""
        return self.ctx.student.generate(batch.noise, batch.cond,
                                         generator=self.ctx.generator).sample
