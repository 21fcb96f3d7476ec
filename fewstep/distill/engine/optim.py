"""The optimizers of a run: the student's AdamW and the method's auxiliary AdamW (from its
:class:`~fewstep.distill.methods.base.AuxUpdates`), each with a linear-warm-up LR schedule.

A rollback scales every learning rate by a factor (:meth:`Optimizers.scale_lr`): the groups'
``initial_lr`` is scaled and the schedulers are rebuilt at the current step, so the scheduler
state (``base_lrs``, last LR) stays consistent through public API only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from torch.profiler import record_function

from fewstep.distill.config import TrainSpec
from fewstep.distill.context import AuxUpdates
from fewstep.distill.engine.distributed import DistEnv
from fewstep.distill.engine.fsdp import full_tensor
from fewstep.distill.engine.precision import Precision


def adamw_options(device: torch.device) -> dict[str, bool]:
    """``{"fused": True}`` where PyTorch has a fused AdamW kernel for ``device`` (CPU and CUDA:
    one kernel per tensor instead of ~10 ops; ~4x faster steps on CPU), else ``{}``."""
    try:
        torch.optim.AdamW([nn.Parameter(torch.zeros(1, device=device))], fused=True)
    except (RuntimeError, ValueError):
        return {}
    return {"fused": True}


def autocast(device: torch.device, mixed_precision: str) -> contextlib.AbstractContextManager:
    """``train.mixed_precision``: ``auto`` / ``no`` (float32) / ``bf16`` / ``fp16`` autocast on
    ``device`` (:class:`~fewstep.distill.engine.precision.Precision`; the trainer uses that,
    with the fp16 gradient scaler); the optimizers always step float32 master weights."""
    return Precision(mixed_precision, device).autocast()


def lr_warmup(steps: int) -> Callable[[int], float]:
    """LR multiplier for a linear warm-up over ``steps`` generator updates (then constant)."""
    return lambda i: 1.0 if steps <= 0 else min(1.0, (i + 1) / steps)


def grad_norm(params: list[nn.Parameter]) -> Tensor:
    """Total 2-norm of the gradients (what ``clip_grad_norm_`` computes); non-finite iff some
    gradient is (or the norm overflows)."""
    grads = [p.grad for p in params if p.grad is not None]
    # FSDP-sharded gradients give a DTensor norm: its full value is the global norm
    return full_tensor(torch.nn.utils.get_total_norm(grads)) if grads else torch.zeros(())


def params_of(opt: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for g in opt.param_groups for p in g["params"]]


def backward_step(loss: Tensor, logs: dict[str, Tensor], opt: torch.optim.Optimizer,
                  clip: float, prec: Precision, dist: DistEnv, device: torch.device,
                  synced: bool, profile: bool = True) -> tuple[dict[str, Tensor], Tensor]:
    """One optimizer update: ``zero_grad``, backward (DDP reduces during it when ``synced``;
    else the gradients are averaged here), clip at ``clip``, step. Returns the logs averaged
    over the processes and the gradient norm, both left on the device: they are checked when
    the logs are read; with fp16 the scaler skips a step whose gradients overflowed.
    ``profile``: profiler labels (the generator phase)."""
    label = record_function if profile else (lambda name: contextlib.nullcontext())
    opt.zero_grad(set_to_none=True)
    with label("generator_backward"):
        prec.backward(loss)
    with label("optimizer"):
        params = params_of(opt)
        if not synced:
            dist.average_gradients(params)
        logs = dist.mean_logs(logs, device)
        prec.unscale_(opt)
        norm = grad_norm(params)
        torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
        prec.step(opt)
        prec.update()
    return logs, norm


@dataclass
class Optimizers:
    """``g``: the student's optimizer; ``aux``: the method's (or ``None``)."""

    g: torch.optim.Optimizer
    sched_g: LRScheduler
    aux: torch.optim.Optimizer | None
    sched_aux: LRScheduler | None
    aux_updates: AuxUpdates
    warmup: int

    @classmethod
    def build(cls, student: nn.Module, aux_updates: AuxUpdates, t: TrainSpec,
              device: torch.device) -> Optimizers:
        fast = adamw_options(device)
        g = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=t.lr,
                              betas=t.betas, weight_decay=t.weight_decay, **fast)
        aux = torch.optim.AdamW(aux_updates.aux_groups, lr=t.lr, betas=t.betas, **fast) \
            if aux_updates.aux_groups else None
        sched_aux = LambdaLR(aux, lr_warmup(t.lr_warmup)) if aux is not None else None
        return cls(g, LambdaLR(g, lr_warmup(t.lr_warmup)), aux, sched_aux, aux_updates,
                   t.lr_warmup)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.g} | ({"aux": self.aux} if self.aux is not None else {})

    def schedulers(self) -> dict[str, LRScheduler]:
        out: dict[str, LRScheduler] = {"g": self.sched_g}
        if self.sched_aux is not None:
            out["aux"] = self.sched_aux
        return out

    def step_schedulers(self) -> None:
        for s in self.schedulers().values():
            s.step()

    def scale_lr(self, factor: float) -> None:
        """Multiply every learning rate (base and current) by ``factor``."""
        step = self.sched_g.last_epoch
        for opt in self.optimizers().values():
            for grp in opt.param_groups:
                grp["initial_lr"] *= factor
        # a scheduler built at ``last_epoch = step - 1`` takes the groups' ``initial_lr`` as
        # its base and sets lr = initial_lr * warmup(step): the state a run that always had
        # these base LRs would have
        self.sched_g = LambdaLR(self.g, lr_warmup(self.warmup), last_epoch=step - 1)
        if self.aux is not None:
            self.sched_aux = LambdaLR(self.aux, lr_warmup(self.warmup), last_epoch=step - 1)
