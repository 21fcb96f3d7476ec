"""DMD2 (docs/methods.md §4): distribution matching with a fake score network, two time scales, an
optional GAN head on the fake score network, and backward simulation for K > 1 steps.

Generator update on a batch (noise ``eps``, condition ``c``)::

    k ~ U{0..K-1};  x = G_k(x_k)   with x_k from the student's own no-grad steps 0..k-1
    sigma ~ U[dm.sigma_min, dm.sigma_max];  x_t = (1 - sigma) sg(x) + sigma eps'
    grad = (F(x_t) - T_w(x_t)) / mean|x - T_w(x_t)|        (T_w: teacher with CFG w; no graph)
    L_G  = 0.5 ||x - sg(x - grad)||^2  +  gan.weight * softplus(-D(x_{sigma_d}, sigma_d))

Aux update (``train.aux_ratio`` per generator update: DMD2's two-time-scale rule)::

    L_aux = ||F(x_s) - sg(x)||^2 / s^2                     (denoising loss, x = sg(G_k(x_k)))
          + dmd2.d_weight [softplus(-D(real_{sigma_d})) + softplus(D(x_{sigma_d}))]  (GAN on)

``D`` is a logit head on the fake score network's last hidden features (``FakeScore.logits``),
so the discriminator loss also shapes ``F``'s trunk (at ``dmd2.d_weight``); ``sigma_d ~
U[gan.sigma_min, gan.sigma_max]`` per sample; "real" is data or teacher samples (``gan.real``);
``gan.loss`` chooses softplus (non-saturating, DMD2's) or hinge. ``gan.weight = 0`` gives plain
DMD with a two-time-scale fake score update.

Defaults are the released scripts' (tianweiy/DMD2 @ 8d8fa55, ImageNet-64 EDM, the
class-conditional release): ``train.aux_ratio = 5`` (``--dfake_gen_update_ratio 5``; 10 for
SD1.5, ``main/train_edm.py``); ``dmd2.d_weight = 1e-2`` (``--cls_loss_weight 1e-2``: the D loss
added to the fake-score loss, ``main/edm/edm_guidance.py::compute_guidance_loss`` /
``train_edm.py``); ``gan.weight = 3e-3`` (``--gen_cls_loss_weight 3e-3``; SD1.5 1e-3, SDXL
5e-3); GAN levels over all timesteps (``--diffusion_gan_max_timestep 1000``,
``edm_guidance.py::compute_cls_logits``), here ``sigma_d ~ U[0.001, 0.999]``. The DM term's
levels ``U[dm.sigma_min = 0.02, dm.sigma_max = 0.98]`` are its ``min/max_step_percent``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from fewstep.distill.config import DistillConfig, DMSpec, GanSpec, TrainSpec
from fewstep.distill.context import Batch, DistillContext, Logs
from fewstep.distill.methods.base import FakeScoreMethod
from fewstep.distill.methods.registry import METHODS
from fewstep.distill.parts.builders import build_fake_score, build_matching
from fewstep.distill.parts.fake_score import FakeScore
from fewstep.distill.parts.losses import d_loss, g_loss
from fewstep.student.student import backward_simulate
from fewstep.utils.config_files import StrictModel


class DMD2Spec(StrictModel):
    d_weight: float = Field(1e-2, ge=0.0, description="weight of the discriminator loss in "
                            "the fake score network's loss (DMD2 cls_loss_weight 1e-2)")


class DMD2GanSpec(GanSpec):
    """The GAN block with DMD2's released weight and levels (all timesteps)."""

    weight: float = Field(3e-3, ge=0.0, description="gen_cls_loss_weight (ImageNet 3e-3)")
    sigma_min: float = Field(1e-3, gt=0.0, lt=1.0)
    sigma_max: float = Field(0.999, gt=0.0, lt=1.0)


class DMD2TrainSpec(TrainSpec):
    """The train block with DMD2's two-time-scale ratio."""

    aux_ratio: int = Field(5, ge=1, description="fake score / D updates per generator update "
                           "(DMD2 dfake_gen_update_ratio 5)")


class DMD2Config(DistillConfig):
    """DMD2 reads ``dm`` (fake score: ``fake_lr``, ``cfg_scale``, sigma range) and ``gan``
    (``weight``, ``loss``, ``real`` / ``real_source``, ``sigma_min`` / ``sigma_max``, ``warmup``;
    ``lr`` for the logit head; the head sits on the fake network, so ``discriminator``,
    ``layers`` and ``head_hidden`` are not read); ``train.aux_ratio`` is the two-time-scale
    rule."""

    method: Literal["dmd2"] = "dmd2"
    gan: DMD2GanSpec = DMD2GanSpec()
    dm: DMSpec = DMSpec()
    dmd2: DMD2Spec = DMD2Spec()
    train: DMD2TrainSpec = DMD2TrainSpec()


@METHODS.register("dmd2")
class DMD2(FakeScoreMethod[DMD2Config]):
    """Data and optimizers: :class:`FakeScoreMethod` (real samples for the GAN head; the fake
    score network at ``dm.fake_lr``, its head at ``gan.lr``)."""

    config_class = DMD2Config

    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        self.use_gan = self.cfg.gan.weight > 0
        self.matching = build_matching(ctx, fake=build_fake_score(ctx, gan_head=self.use_gan))

    @classmethod
    def graph_forwards(cls, cfg: DistillConfig) -> int:
        return 1 + (1 if cls.config_of(cfg).gan.weight > 0 else 0)

    @property
    def fake(self) -> FakeScore:
        return self.matching.fake

    def _gan_sigma(self, n: int) -> Tensor:
        g = self.cfg.gan
        return g.sigma_min + (g.sigma_max - g.sigma_min) * self.ctx.rand(n)

    def generator_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        cfg, gen = self.cfg, self.ctx.generator
        k, _, _, x = backward_simulate(self.ctx.student, batch.noise, batch.cond, gen)
        l_dm, grad = self.matching.loss(x, batch.cond, gen)
        logs: Logs = {"g_dm": l_dm.detach(), "dm_grad_abs": grad.abs().mean(),
                      "step_k": torch.tensor(float(k))}
        total = l_dm
        if self.use_gan and step >= cfg.gan.warmup:
            sig = self._gan_sigma(x.shape[0])
            logs["g_adv"] = g_loss(self.fake.noised_logits(x, sig, batch.cond, gen), cfg.gan.loss)
            total = total + cfg.gan.weight * logs["g_adv"]
        logs["g_total"] = total.detach()
        return total, logs

    def aux_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        gen = self.ctx.generator
        with torch.no_grad():
            x = backward_simulate(self.ctx.student, batch.noise, batch.cond, gen)[3]
        logs: Logs = {"fake_loss": self.fake.loss(x, batch.cond, gen)}
        total = logs["fake_loss"]
        if self.use_gan:
            n = x.shape[0]
            assert batch.real is not None  # data_needs(): real samples when use_gan
            lr = self.fake.noised_logits(batch.real, self._gan_sigma(n), batch.real_cond, gen)
            lf = self.fake.noised_logits(x, self._gan_sigma(n), batch.cond, gen)
            logs["d_loss"] = d_loss(lr, lf, self.cfg.gan.loss)
            logs["d_real"], logs["d_fake"] = lr.mean().detach(), lf.mean().detach()
            total = total + self.cfg.dmd2.d_weight * logs["d_loss"]
        return total, logs
