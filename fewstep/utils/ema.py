"""The exponential moving average of trained weights (the one EMA of the project: the
distillation trainer's student and teacher training use it).

``ema <- decay * ema + (1 - decay) * model`` for each parameter of ``model`` that requires
grad, paired in order with ``ema``'s parameters (``ema`` is a copy of ``model``: for a student,
:meth:`~fewstep.student.student.Student.ema_copy`, which shares a LoRA base instead of copying
it). One multi-tensor ``lerp`` per call, element-wise identical to ``e.lerp_(p, 1 - decay)``.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """One EMA step of ``ema`` towards ``model`` (``0 <= decay < 1``; parameters of ``model``
    that do not require grad, e.g. a frozen LoRA base, are skipped)."""
    pairs = [(e, p.detach()) for e, p in zip(ema.parameters(), model.parameters(), strict=True)
             if p.requires_grad]
    if pairs:
        torch._foreach_lerp_([e for e, _ in pairs], [p.to(e.dtype) for e, p in pairs],
                             1.0 - float(decay))


__all__ = ["ema_update"]
