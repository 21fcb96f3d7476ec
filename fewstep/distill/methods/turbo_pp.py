"""Z-Image Turbo++ (METHODS §3): the headline 2-step recipe.

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

Aux update: the discriminator on real vs. (detached) student outputs — both the final output
and, when ``step1.loss = adversarial``, the step-1 output — and the fake score network on the
final output when ``lambda_dm > 0`` or ``step1.loss = dm``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fewstep.distill.builders import build_adversary, build_matching
from fewstep.distill.methods.base import Batch, DistillContext, DistillMethod, Logs, cat_cond


class TurboPP(DistillMethod):
    needs_real = True

    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        cfg = ctx.cfg
        self.needs_teacher_pairs = (cfg.step1.loss == "teacher_traj" and cfg.step1.weight > 0) \
            or cfg.turbo.regression_weight > 0
        self.use_gan = cfg.gan.weight > 0 or cfg.step1.loss == "adversarial"
        self.use_dm = cfg.dm.weight > 0 or cfg.step1.loss == "dm"
        self.needs_real = self.use_gan
        self.adversary = build_adversary(ctx) if self.use_gan else None
        self.matching = build_matching(ctx) if self.use_dm else None

    def _unroll(self, batch: Batch) -> tuple[Tensor, Tensor]:
        traj = self.ctx.student.generate(batch.noise, batch.cond, generator=self.ctx.generator,
                                         detach_between_steps=not self.ctx.cfg.turbo.end_to_end)
        return traj.x0s[0], traj.sample

    def generator_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        cfg, gen = self.ctx.cfg, self.ctx.generator
        x0_1, x0_k = self._unroll(batch)
        logs: Logs = {}
        total = x0_k.new_zeros(())
        gan_on = self.adversary is not None and step >= cfg.gan.warmup
        if gan_on and cfg.gan.weight > 0:
            logs["g_adv"] = self.adversary.generator_loss(x0_k, batch.cond, gen)
            total = total + cfg.gan.weight * logs["g_adv"]
        if self.matching is not None and cfg.dm.weight > 0:
            logs["g_dm"], _ = self.matching.loss(x0_k, batch.cond, gen)
            total = total + cfg.dm.weight * logs["g_dm"]
        if cfg.turbo.regression_weight > 0:
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
        kind = self.ctx.cfg.step1.loss
        if kind == "teacher_traj":
            return F.mse_loss(x0_1, batch.teacher_mid)
        if kind == "adversarial":
            return self.adversary.generator_loss(x0_1, batch.cond, gen) if gan_on else None
        if kind == "dm":
            return self.matching.loss(x0_1, batch.cond, gen)[0]
        return None

    def aux_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs] | None:
        if self.adversary is None and self.matching is None:
            return None
        gen = self.ctx.generator
        with torch.no_grad():
            traj = self.ctx.student.generate(batch.noise, batch.cond, generator=gen)
        logs: Logs = {}
        total = batch.noise.new_zeros(())
        if self.adversary is not None:
            fake, fake_cond = traj.sample, batch.cond
            if self.ctx.cfg.step1.loss == "adversarial" and self.ctx.student.num_steps > 1:
                fake = torch.cat([fake, traj.x0s[0]])
                fake_cond = cat_cond(batch.cond, batch.cond)
                real, real_cond = (torch.cat([batch.real, batch.real]),
                                   cat_cond(batch.real_cond, batch.real_cond))
            else:
                real, real_cond = batch.real, batch.real_cond
            ld, dl = self.adversary.discriminator_loss(real, real_cond, fake, fake_cond, gen)
            logs.update(dl)
            logs["d_loss"] = ld
            total = total + ld
        if self.matching is not None:
            fake_in = traj.sample
            if self.ctx.cfg.step1.loss == "dm" and self.ctx.student.num_steps > 1:
                fake_in = torch.cat([traj.sample, traj.x0s[0]])
                cond = cat_cond(batch.cond, batch.cond)
            else:
                cond = batch.cond
            logs["fake_loss"] = self.matching.fake.loss(fake_in, cond, gen)
            total = total + logs["fake_loss"]
        return total, logs

    def aux_parameter_groups(self) -> list[dict[str, Any]]:
        groups = []
        if self.adversary is not None:
            groups.append({"params": [p for p in self.adversary.parameters() if p.requires_grad],
                           "lr": self.ctx.cfg.gan.lr})
        if self.matching is not None:
            groups.append({"params": list(self.matching.fake.parameters()),
                           "lr": self.ctx.cfg.dm.fake_lr})
        return groups
