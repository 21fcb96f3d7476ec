"""Placing the trainable networks on the processes of a multi-process run (see
:mod:`fewstep.distill.engine.distributed`): rank 0's initial weights everywhere, the shared
step-choice generator on the student, and with ``train.distributed: fsdp`` the student's step
networks (a LoRA student's adapters with its base), its EMA and the fake score networks sharded
with FSDP2."""

from __future__ import annotations

import torch
from torch import nn

from fewstep.distill.engine.distributed import DistEnv
from fewstep.distill.engine.fsdp import fsdp_shard
from fewstep.distill.parts.fake_score import FakeScore
from fewstep.student.student import Student


def distribute(dist: DistEnv, student: Student, ema: Student, method: nn.Module,
               step_generator: torch.Generator | None, teacher: set[int] | None = None) -> None:
    """A no-op with one process. ``teacher``: ``id`` of each teacher parameter (a LoRA base
    that shares them keeps them replicated under FSDP)."""
    teacher = teacher or set()
    if not dist.enabled:
        return
    dist.broadcast_modules(student, ema, method)
    student.step_generator = step_generator
    if dist.fsdp:
        fakes = [m.den for m in method.modules() if isinstance(m, FakeScore)]
        for m in [*student.steps, *ema.steps, *fakes]:
            fsdp_shard(m)
        # a LoRA student: its base with the adapters; weights the base shares with the teacher
        # (one frozen base) stay replicated, only what the student owns is sharded
        for st in (student, ema):
            if st.lora is not None:
                base = st.lora.base
                fsdp_shard(base, ignored=[p for p in base.parameters() if id(p) in teacher])
