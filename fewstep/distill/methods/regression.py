"""Trajectory regression baseline: the student regresses the teacher's N-step sample from the
same noise, ``L = ||G(eps) - T_N(eps)||^2`` (end-to-end through all student steps)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fewstep.distill.methods.base import Batch, DistillMethod, Logs


class Regression(DistillMethod):
    needs_teacher_pairs = True

    def generator_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        out = self.ctx.student.generate(batch.noise, batch.cond, generator=self.ctx.generator)
        loss = F.mse_loss(out.sample, batch.teacher_sample)
        return loss, {"g_reg": loss.detach()}
