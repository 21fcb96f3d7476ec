"""The divergence guard's gradient error: a non-finite gradient norm is a
:class:`DivergenceError` naming the update, the phase and the parameter. (The trainer reads the
loss terms and gradient norms every ``train.log_every`` steps and names a non-finite loss term
itself, :meth:`~fewstep.distill.trainer.Trainer._flush_logs`.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from fewstep.errors import DivergenceError


def nonfinite_gradient(params: list[nn.Parameter], phase: str, norm: float, step: int,
                       named: Callable[[], Iterator[tuple[str, nn.Parameter]]]
                       ) -> DivergenceError:
    """The error for a non-finite total gradient norm found when the logs of update ``step``
    are read (every ``train.log_every`` steps): names the first parameter of ``params`` whose
    current gradient is not finite (the newest update's), else the norm."""
    names = {id(q): n for n, q in named()}
    for p in params:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return DivergenceError(
                f"{phase} gradient of {names.get(id(p), 'a parameter')!r} is not finite at "
                f"step {step} (its loss terms were finite)")
    return DivergenceError(f"{phase} gradient norm is {norm} at step {step}")

