"""SiD few-step (METHODS §5): score identity distillation of a K-step generator, with
Zero-CFG / Anti-CFG guidance and an optional diffusion-GAN head inside the fake score network.

Generator update on a batch (noise ``eps``, condition ``c``)::

    k ~ U{0..K-1};  x_g = G_k(x_k)   (steps before k without gradient: the uniform mixture)
    sigma ~ sigmoid(N(sid.sigma_mean = ln 2, sid.sigma_std = 1.6)),  x_t = (1 - sigma) x_g + sigma e
    f_r = T(x_t, sigma, c_r; w_r),  f_f = F(x_t, sigma, c_f; w_f)        (both nets frozen here)
    L_SiD = mean[ (1 - sigma) w (f_r - f_f) ((f_r - x_g) - alpha (f_r - f_f)) ],
            w = 1 / mean|x_g - f_r|  (per sample, no gradient)
    L_G = (1 - g) L_SiD + g BCE(D(x_t, sigma), 1)      (g = sid.gan_weight after the warm-up)

The gradient reaches the student through ``x_g`` and through ``x_t`` inside both networks.

Guidance (``sid.guidance``):

* ``standard``: teacher with ``w_r = sid.real_cfg_scale``, fake with ``c`` and
  ``w_f = sid.fake_cfg_scale``;
* ``zero_cfg``: teacher without CFG (``w_r = 1``), fake net *without conditioning*: it is
  trained and evaluated on the null condition;
* ``anti_cfg``: teacher with ``w_r = sid.real_cfg_scale``, fake with negative guidance
  ``w_f = sid.anti_cfg_scale`` (CFG on the fake score, ``F_u + w_f (F_c - F_u)``).

Aux update (one per generator update, ``train.aux_ratio = 1``)::

    L_aux = ||F(x_s, s, c_f) - sg(x_g)||^2 / s^2                       (denoising loss)
          + 0.5 [BCE(D(real_sigma), 1) + BCE(D(x_g,sigma), 0)]   (after the warm-up, if g > 0)

with real and fake re-noised at the same ``sigma`` (drawn like the loss level) and ``D`` a
logit head on the fake network's last hidden features. When the fake net is evaluated with
guidance (``w_f != 1``) it is trained with 10 % condition dropout so both branches track the
student. The student's step levels are ``student.sigmas``; the paper's ``t_i = 1 - i/K`` equals
the default schedule (every ``N/K``-th level of the teacher's shifted schedule) only at shift 1
(for K = 2 at shift 3 the default is ``[1, 0.75]``, not ``[1, 0.5]``): set ``student.sigmas``
to reproduce it.

Config: ``sid`` (the loss), ``dm.fake_lr`` (fake score network), and from ``gan`` the head's
``lr`` and where real samples come from (``real`` / ``real_source``); the head's loss is
non-saturating and its share / warm-up are ``sid.gan_weight`` / ``sid.gan_warmup``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from fewstep.core.path import FlowPath, logit_normal_sigma
from fewstep.distill.config import DistillConfig, DMSpec, GanSpec
from fewstep.distill.context import Batch, DistillContext, Logs
from fewstep.distill.methods.base import FakeScoreMethod
from fewstep.distill.methods.registry import METHODS
from fewstep.distill.parts.builders import build_fake_score
from fewstep.distill.parts.losses import d_loss, g_loss, sid_loss
from fewstep.student.student import backward_simulate
from fewstep.utils.config_files import StrictModel

FAKE_COND_DROPOUT = 0.1


class SiDSpec(StrictModel):
    alpha: float = 1.2
    guidance: Literal["standard", "zero_cfg", "anti_cfg"] = "zero_cfg"
    real_cfg_scale: float = 1.0
    fake_cfg_scale: float = Field(1.0, description="fake-net w for guidance=standard")
    anti_cfg_scale: float = Field(-0.5, description="fake-net w for anti_cfg (not published)")
    gan_weight: float = Field(0.0, ge=0.0, le=1.0, description="diffusion-GAN share g: "
                              "(1 - g) L_SiD + g L_GAN (0.5 = METHODS); 0 disables")
    gan_warmup: int = Field(0, ge=0)
    sigma_mean: float = Field(0.6931471805599453, description="loss level sigma ~ "
                              "sigmoid(N(mean, std^2)); ln 2")
    sigma_std: float = Field(1.6, gt=0.0)
    sigma_clamp: float = Field(1e-3, gt=0.0, lt=0.5, description="sigma kept in [c, 1 - c]")


class SiDConfig(DistillConfig):
    method: Literal["sid"] = "sid"
    sid: SiDSpec = SiDSpec()
    dm: DMSpec = DMSpec()
    gan: GanSpec = GanSpec()


@METHODS.register("sid")
class SiD(FakeScoreMethod):
    """Data and optimizers: :class:`FakeScoreMethod` (real samples for the GAN head; the fake
    score network at ``dm.fake_lr``, its head at ``gan.lr``)."""

    config_class = SiDConfig

    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        s = ctx.cfg.sid  # type: ignore[attr-defined]
        self.use_gan = s.gan_weight > 0
        self.fake = build_fake_score(ctx, gan_head=self.use_gan)
        self.real_w = 1.0 if s.guidance == "zero_cfg" else s.real_cfg_scale
        self.fake_w = {"zero_cfg": 1.0, "standard": s.fake_cfg_scale,
                       "anti_cfg": s.anti_cfg_scale}[s.guidance]

    # ------------------------------------------------------------ declarations
    @classmethod
    def graph_forwards(cls, cfg: DistillConfig) -> int:
        return 3  # student step + teacher and fake score with gradient to their input

    # ------------------------------------------------------------ pieces
    def loss_sigma(self, n: int) -> Tensor:
        """``(n,)`` loss noise levels ``sigmoid(N(mean, std^2))`` clamped to ``[c, 1 - c]``."""
        s = self.ctx.cfg.sid  # type: ignore[attr-defined]
        sig = logit_normal_sigma(n, s.sigma_mean, s.sigma_std, generator=self.ctx.generator)
        return sig.to(self.ctx.device).clamp(s.sigma_clamp, 1.0 - s.sigma_clamp)

    def fake_cond(self, cond: Any) -> Any:
        """The fake net's condition: the null condition under Zero-CFG, else ``cond``."""
        if self.ctx.cfg.sid.guidance == "zero_cfg":
            return self.fake.den.null_cond(cond)
        return cond

    def fake_pred(self, x_t: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        """``f_psi``: the fake net's (guided) x0 prediction per ``sid.guidance``."""
        return self.fake.guided(x_t, sigma, self.fake_cond(cond), self.fake_w)

    def real_pred(self, x_t: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        """``f_phi``: the teacher's (guided) x0 prediction."""
        return self.ctx.teacher.guided(x_t, sigma, cond, self.real_w)

    def gan_on(self, step: int) -> bool:
        return self.use_gan and step >= self.ctx.cfg.sid.gan_warmup

    # ------------------------------------------------------------ losses
    def generator_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        s, gen = self.ctx.cfg.sid, self.ctx.generator
        k, _, _, x_g = backward_simulate(self.ctx.student, batch.noise, batch.cond, gen)
        sigma = self.loss_sigma(x_g.shape[0])
        x_t = FlowPath.add_noise(x_g, self.ctx.randn_like(x_g), sigma)
        f_r = self.real_pred(x_t, sigma, batch.cond)
        f_f = self.fake_pred(x_t, sigma, batch.cond)
        l_sid = sid_loss(x_g, f_r, f_f, s.alpha, weight=1.0 - sigma)
        logs: Logs = {"g_sid": l_sid.detach(), "step_k": torch.tensor(float(k))}
        total = l_sid
        if self.gan_on(step):
            logs["g_adv"] = g_loss(self.fake.logits(x_t, sigma, self.fake_cond(batch.cond)),
                                   "non_saturating")
            total = (1.0 - s.gan_weight) * l_sid + s.gan_weight * logs["g_adv"]
        logs["g_total"] = total.detach()
        return total, logs

    def aux_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        gen = self.ctx.generator
        with torch.no_grad():
            x_g = backward_simulate(self.ctx.student, batch.noise, batch.cond, gen)[3]
        fc = self.fake_cond(batch.cond)
        drop = FAKE_COND_DROPOUT if self.fake_w != 1.0 else 0.0
        logs: Logs = {"fake_loss": self.fake.loss(x_g, fc, gen, cond_dropout=drop,
                                                  null_cond=self.fake.den.null_cond(fc))}
        total = logs["fake_loss"]
        if self.gan_on(step):
            sigma = self.loss_sigma(x_g.shape[0])
            lr = self.fake.noised_logits(batch.real, sigma, self.fake_cond(batch.real_cond), gen)
            lf = self.fake.noised_logits(x_g, sigma, fc, gen)
            logs["d_loss"] = 0.5 * d_loss(lr, lf, "non_saturating")
            logs["d_real"], logs["d_fake"] = lr.mean().detach(), lf.mean().detach()
            total = total + logs["d_loss"]
        return total, logs
