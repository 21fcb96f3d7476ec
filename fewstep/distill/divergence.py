"""The divergence guard: a non-finite loss term or gradient is a :class:`DivergenceError`
naming the update, the phase and the term (or the parameter)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from fewstep.errors import DivergenceError


def check_finite(logs: dict[str, Tensor], params: list[nn.Parameter], phase: str,
                 total_norm: Tensor, step: int,
                 named: Callable[[], Iterator[tuple[str, nn.Parameter]]]) -> None:
    """Raise if a loss term in ``logs`` or a gradient of ``params`` is NaN / Inf.

    ``step``: the update being computed, as numbered in ``losses.jsonl`` and checkpoints;
    ``total_norm``: the gradients' total norm (finite means every gradient is); ``named``:
    ``(name, parameter)`` pairs to name the offending parameter."""
    for k, v in logs.items():
        if not torch.isfinite(v).all():
            raise DivergenceError(f"{phase} loss term {k!r} is {v.float().mean().item()} at "
                                  f"step {step}")
    if bool(torch.isfinite(total_norm)):
        return
    names = {id(q): n for n, q in named()}
    for p in params:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            raise DivergenceError(
                f"{phase} gradient of {names.get(id(p), 'a parameter')!r} is not finite at "
                f"step {step} (loss terms {', '.join(logs) or 'total'} were finite)")


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

