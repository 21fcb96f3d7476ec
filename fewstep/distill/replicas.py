"""Placing the trainable networks on the processes of a multi-process run (see
:mod:`fewstep.distill.distributed`): rank 0's initial weights everywhere, the shared
step-choice generator on the student, and with ``train.distributed: fsdp`` the student's step
networks, its EMA and the fake score networks sharded with FSDP2."""

from __future__ import annotations

import torch
from torch import nn

from fewstep.distill.distributed import DistEnv, fsdp_shard
from fewstep.distill.fake_score import FakeScore
from fewstep.distill.student import Student
from fewstep.errors import ConfigError


def distribute(dist: DistEnv, student: Student, ema: Student, method: nn.Module,
               step_generator: torch.Generator | None) -> None:
    """A no-op with one process."""
    if not dist.enabled:
        return
    dist.broadcast_modules(student, ema, method)
    student.step_generator = step_generator
    if dist.fsdp:
        if student.lora is not None:
            raise ConfigError("train.distributed: fsdp is not supported with "
                              "student.parameterization=lora; use ddp (the adapters are "
                              "small; the frozen base is replicated on each rank)")
        fakes = [m.den for m in method.modules() if isinstance(m, FakeScore)]
        for m in [*student.steps, *ema.steps, *fakes]:
            fsdp_shard(m)
