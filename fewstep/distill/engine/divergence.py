"""The divergence guard: the trainer's per-step logs stay on the device and are read every
``train.log_every`` steps (:func:`flush_logs`); a non-finite loss term or gradient norm is a
:class:`DivergenceError` naming the update, the phase and the term or parameter."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from fewstep.distill.engine.precision import DeferredLogs
from fewstep.distill.engine.run_logs import LossLog
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


def flush_logs(pending: DeferredLogs, losses: LossLog, aux_terms: set[str],
               generator_params: list[nn.Parameter], aux_params: list[nn.Parameter],
               named: Callable[[], Iterator[tuple[str, nn.Parameter]]]
               ) -> dict[str, float] | None:
    """Read every pending step's logs from the device (one transfer), append them to
    ``losses`` and raise :class:`DivergenceError` naming the first non-finite term (rows from
    that step on are not written). Returns the newest row's terms (``None``: nothing pending).
    ``aux_terms``: the names the auxiliary loss logs (to name the phase)."""
    rows, bad = pending.flush()
    last = None
    for r in rows:
        if bad is not None and r["step"] >= bad[0]:
            break
        last = {k: v for k, v in r.items() if k != "step" and not k.startswith("_")}
        losses.append(int(r["step"]), last)
    if bad is None:
        return last
    step, term, value = bad
    if term in ("grad_norm", "_aux_grad_norm"):
        gen = term == "grad_norm"
        raise nonfinite_gradient(generator_params if gen else aux_params,
                                 "generator" if gen else "auxiliary", value, step, named)
    phase = "auxiliary" if term in aux_terms else "generator"
    raise DivergenceError(f"{phase} loss term {term!r} is {value} at step {step}")
