"""Trajectory regression baseline: the student regresses the teacher's N-step sample from the
same noise, ``L = ||G(eps) - T_N(eps)||^2`` (end-to-end through all student steps).

Config: no section of its own; data: teacher pairs from the teacher cache.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from fewstep.distill.config import DistillConfig
from fewstep.distill.context import Batch, DataNeeds, Logs
from fewstep.distill.methods.base import DistillMethod
from fewstep.distill.methods.registry import METHODS


class RegressionConfig(DistillConfig):
    method: Literal["regression"] = "regression"


@METHODS.register("regression")
class Regression(DistillMethod[RegressionConfig]):

    config_class = RegressionConfig
    def data_needs(self) -> DataNeeds:
        return DataNeeds(teacher_pairs=True)

    @classmethod
    def graph_forwards(cls, cfg: DistillConfig) -> int:
        return cfg.student.num_steps  # the whole unroll keeps its graph

    def generator_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        out = self.ctx.student.generate(batch.noise, batch.cond, generator=self.ctx.generator)
        assert batch.teacher_sample is not None  # data_needs(): teacher pairs
        loss = F.mse_loss(out.sample, batch.teacher_sample)
        return loss, {"g_reg": loss.detach()}
