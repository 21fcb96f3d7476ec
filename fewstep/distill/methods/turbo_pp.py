"""Z-Image Turbo++ (docs/methods.md §3): the headline 2-step recipe.

Generator objective on one batch (noise ``eps``, condition ``c``)::

    x0_1 = G_1(eps, 1, c);  x_2 = (1 - s2) x0_1 + s2 eps'   (no stop-gradient: end-to-end)
    x0_2 = G_2(x_2, s2, c)
    L = lambda_adv L_adv(x0_2) + lambda_dm L_DM(x0_2) + lambda_1 L_1(x0_1)

* ``L_adv``: GAN loss of a discriminator that sees the *teacher's* samples as real
  (``gan.real = teacher``) — or data (``gan.real = dataset``, ablation).
* ``L_1`` (``step1.loss``): ``teacher_traj`` = ``||x0_1 - T_mid||^2`` with ``T_mid`` the
  teacher's x0 estimate nearest ``sigma_2`` on its own trajectory from the same ``eps``;
  ``adversarial`` = the GAN loss on ``x0_1``; ``dm`` = the DM loss on ``x0_1``; ``none``.
* ``turbo.end_to_end = false`` detaches ``x_2`` (ablation); step decoupling is the student's
  ``parameterization``.

Aux update: the discriminator on real vs. (detached) student outputs, and the fake score
network(s) on the detached outputs.

The step-1 losses that need an auxiliary network:

* ``step1.loss = dm``: each output has its *own* fake score network (``step1.fake_score =
  per_output``, default): ``F_final`` trains on the final outputs only, ``F_1`` on the step-1
  outputs only, so each DM gradient uses the score of that output's own distribution.
  ``shared`` (ablation; the earlier behaviour) trains one network on the concatenation, whose
  score is that of the mixture: a biased DM gradient for both outputs.
* ``step1.loss = adversarial``: ``step1.discriminator = shared`` (default) — one discriminator
  sees both outputs as fake (its real batch duplicated), so both are pushed towards the
  teacher's sample distribution by the same critic; the step-1 output is an x0 estimate that
  should itself look like a teacher sample, and sharing halves the heads and their updates.
  ``separate`` gives step 1 its own heads on the same frozen teacher features.

Data: teacher pairs when ``step1.loss = teacher_traj`` (or ``turbo.regression_weight > 0``);
real samples per ``gan.real`` / ``gan.real_source`` when there is a GAN.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from fewstep.distill.config import DistillConfig, DMSpec, GanSpec
from fewstep.distill.context import AuxUpdates, Batch, DataNeeds, DistillContext, Logs
from fewstep.distill.methods.base import DistillMethod, cat_cond
from fewstep.distill.methods.registry import METHODS
from fewstep.distill.parts.builders import build_adversary, build_matching
from fewstep.utils.config_files import StrictModel


class Step1Spec(StrictModel):
    """Turbo++ step-1 (iterative regularisation) loss on ``x0_hat_1``."""

    loss: Literal["none", "teacher_traj", "adversarial", "dm"] = "teacher_traj"
    weight: float = Field(1.0, ge=0.0)
    fake_score: Literal["per_output", "shared"] = Field(
        "per_output", description="loss=dm: a fake score network per output (unbiased), or one "
        "on both outputs' mixture (ablation)")
    discriminator: Literal["shared", "separate"] = Field(
        "shared", description="loss=adversarial: one discriminator for both outputs, or heads "
        "of their own for step 1")


class TurboSpec(StrictModel):
    end_to_end: bool = Field(True, description="false detaches x_2 (ablation)")
    regression_weight: float = Field(0.0, ge=0.0, description="optional final-output "
                                     "regression onto the teacher sample from the same noise")


class TurboPPConfig(DistillConfig):
    method: Literal["turbo_pp"] = "turbo_pp"
    gan: GanSpec = GanSpec()
    dm: DMSpec = DMSpec()
    step1: Step1Spec = Step1Spec()
    turbo: TurboSpec = TurboSpec()


@METHODS.register("turbo_pp")
class TurboPP(DistillMethod[TurboPPConfig]):

    config_class = TurboPPConfig
    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        multi = ctx.student.num_steps > 1
        s1 = cfg.step1
        self.use_gan = cfg.gan.weight > 0 or s1.loss == "adversarial"
        self.adversary = build_adversary(ctx) if self.use_gan else None
        #: step-1 heads of their own (``step1.discriminator = separate``)
        self.adversary_1 = build_adversary(ctx) if (
            s1.loss == "adversarial" and s1.discriminator == "separate" and multi) else None
        per_output = s1.loss == "dm" and s1.fake_score == "per_output" and multi
        final_dm = cfg.dm.weight > 0 or (s1.loss == "dm" and not per_output)
        self.matching = build_matching(ctx) if final_dm else None
        #: the step-1 outputs' own fake score (``step1.fake_score = per_output``)
        self.matching_1 = build_matching(ctx) if per_output else None

    # ------------------------------------------------------------ declarations
    def data_needs(self) -> DataNeeds:
        cfg = self.cfg
        pairs = (cfg.step1.loss == "teacher_traj" and cfg.step1.weight > 0) \
            or cfg.turbo.regression_weight > 0
        return DataNeeds(teacher_pairs=pairs, real=self.gan_real(self.use_gan))

    def aux_updates(self) -> AuxUpdates:
        cfg = self.cfg
        groups = []
        for adv in (self.adversary, self.adversary_1):
            if adv is not None:
                groups.append({"params": [p for p in adv.parameters() if p.requires_grad],
                               "lr": cfg.gan.lr})
        for m in (self.matching, self.matching_1):
            if m is not None:
                groups.append({"params": list(m.fake.parameters()), "lr": cfg.dm.fake_lr})
        return self.aux_updates_for(groups)

    @classmethod
    def graph_forwards(cls, cfg: DistillConfig) -> int:
        c = cls.config_of(cfg)
        n = c.student.num_steps if c.turbo.end_to_end else 1
        gan = c.gan.weight > 0 or c.step1.loss == "adversarial"
        return n + (1 if gan and c.gan.discriminator == "teacher_features" else 0) \
            + (1 if c.step1.loss == "adversarial" else 0)

    # ------------------------------------------------------------ losses
    def _unroll(self, batch: Batch) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        traj = self.ctx.student.generate(batch.noise, batch.cond, generator=self.ctx.generator,
                                         detach_between_steps=not cfg.turbo.end_to_end)
        return traj.x0s[0], traj.sample

    def generator_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        cfg = self.cfg
        gen = self.ctx.generator
        x0_1, x0_k = self._unroll(batch)
        logs: Logs = {}
        total = x0_k.new_zeros(())
        gan_on = self.adversary is not None and step >= cfg.gan.warmup
        if gan_on and cfg.gan.weight > 0:
            assert self.adversary is not None  # gan_on
            logs["g_adv"] = self.adversary.generator_loss(x0_k, batch.cond, gen)
            total = total + cfg.gan.weight * logs["g_adv"]
        if self.matching is not None and cfg.dm.weight > 0:
            logs["g_dm"], _ = self.matching.loss(x0_k, batch.cond, gen)
            total = total + cfg.dm.weight * logs["g_dm"]
        if cfg.turbo.regression_weight > 0:
            assert batch.teacher_sample is not None  # data_needs(): teacher pairs
            logs["g_reg"] = F.mse_loss(x0_k, batch.teacher_sample)
            total = total + cfg.turbo.regression_weight * logs["g_reg"]
        if cfg.step1.weight > 0 and self.ctx.student.num_steps > 1:
            l1 = self._step1_loss(x0_1, batch, gen, gan_on)
            if l1 is not None:
                logs["g_step1"] = l1
                total = total + cfg.step1.weight * l1
        logs["g_total"] = total.detach()
        return total, logs

    def _step1_loss(self, x0_1: Tensor, batch: Batch, gen: torch.Generator, gan_on: bool
                    ) -> Tensor | None:
        kind = self.cfg.step1.loss
        if kind == "teacher_traj":
            assert batch.teacher_mid is not None  # data_needs(): teacher pairs
            return F.mse_loss(x0_1, batch.teacher_mid)
        if kind == "adversarial":
            if not gan_on:
                return None
            adv = self.adversary_1 or self.adversary
            assert adv is not None  # gan_on
            return adv.generator_loss(x0_1, batch.cond, gen)
        if kind == "dm":
            matching = self.matching_1 or self.matching
            assert matching is not None  # built in __init__ for step1.loss = dm
            return matching.loss(x0_1, batch.cond, gen)[0]
        return None

    def aux_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs] | None:
        if self.adversary is None and self.matching is None and self.matching_1 is None:
            return None
        cfg = self.cfg
        gen = self.ctx.generator
        multi = self.ctx.student.num_steps > 1
        with torch.no_grad():
            traj = self.ctx.student.generate(batch.noise, batch.cond, generator=gen)
        logs: Logs = {}
        total = batch.noise.new_zeros(())
        if self.adversary is not None:
            assert batch.real is not None  # data_needs(): real samples when use_gan
            fake, fake_cond = traj.sample, batch.cond
            real, real_cond = batch.real, batch.real_cond
            if cfg.step1.loss == "adversarial" and multi and self.adversary_1 is None:
                fake = torch.cat([fake, traj.x0s[0]])
                fake_cond = cat_cond([batch.cond, batch.cond])
                real, real_cond = (torch.cat([batch.real, batch.real]),
                                   cat_cond([batch.real_cond, batch.real_cond]))
            ld, dl = self.adversary.discriminator_loss(real, real_cond, fake, fake_cond, gen)
            logs.update(dl)
            logs["d_loss"] = ld
            total = total + ld
        if self.adversary_1 is not None:
            assert batch.real is not None  # data_needs(): real samples when use_gan
            ld1, dl1 = self.adversary_1.discriminator_loss(batch.real, batch.real_cond,
                                                           traj.x0s[0], batch.cond, gen)
            logs.update({f"{k}_1": v for k, v in dl1.items()})
            logs["d_loss_1"] = ld1
            total = total + ld1
        if self.matching is not None:
            fake_in, cond = traj.sample, batch.cond
            if cfg.step1.loss == "dm" and multi and self.matching_1 is None:  # shared (ablation)
                fake_in = torch.cat([traj.sample, traj.x0s[0]])
                cond = cat_cond([batch.cond, batch.cond])
            logs["fake_loss"] = self.matching.fake.loss(fake_in, cond, gen)
            total = total + logs["fake_loss"]
        if self.matching_1 is not None:
            logs["fake_loss_1"] = self.matching_1.fake.loss(traj.x0s[0], batch.cond, gen)
            total = total + logs["fake_loss_1"]
        return total, logs
