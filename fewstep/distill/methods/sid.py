"""SiD few-step (docs/methods.md §5): score identity distillation of a K-step generator, with
standard / Zero-CFG / Anti-CFG guidance and an optional diffusion-GAN head inside the fake
score network. Defaults follow the official releases (below).

Generator update on a batch (noise ``eps``, condition ``c``)::

    k ~ U{0..K-1};  x_g = G_k(x_k)   (steps before k without gradient: the uniform mixture)
    sigma ~ sigmoid(N(sid.sigma_mean = ln 2, sid.sigma_std = 1.6)),  x_t = (1 - sigma) x_g + sigma e
    f_r = T(x_t, sigma, c_r; w_r),  f_f = F(x_t, sigma, c_f; w_f)        (both nets frozen here)
    L_SiD = mean[ w (f_r - f_f) ((f_r - x_g) - alpha (f_r - f_f)) ]     (element mean)
    w     = sid.weighting: 1 - sigma | 1 / mean|x_g - f_r| | their product  (per sample, no grad)
    L_GAN = sid.gan_loss_scaling * mean_b[ w softplus(-clamp(D(x_t, sigma), +-10)) ]
    L_G   = (1 - g) L_SiD + g L_GAN              (g = sid.gan_weight after the warm-up)

The gradient reaches the student through ``x_g`` and through ``x_t`` inside both networks.

Official defaults and where they come from (SiD-DiT = apple-aiml-research/ml-sid-dit,
``training/sid_dit_training_loop.py::training_loop``, the flow-model release; SiD =
mingyuanzhou/SiD ``training/sid_loss.py::SID_EDMLoss``, the EDM release; SiD-LSG =
mingyuanzhou/SiD-LSG ``training/sid_training_loop.py``, the VP-epsilon release):

* ``weighting`` (``None`` = by teacher kind, as the authors do): ``one_minus_sigma`` for flow
  teachers (velocity / x0 / neg-velocity networks: SiD-DiT's default ``1_minus_sigma``);
  ``legacy`` (``1 / mean|x_g - f_r|``) for epsilon and VP-adapter teachers (SiD, SiD-LSG use
  only that normaliser). ``both`` is fewstep's former product, kept as an option.
* ``alpha = 1`` (SiD-DiT and SiD-LSG; SiD for EDM uses 1.2).
* ``guidance = standard`` with ``w_r = w_f = 1`` (SiD-DiT's click defaults
  ``cfg_train_fake = cfg_eval_fake = cfg_eval_real = 1``; its run script uses 4.5 / 4.5 / 4.5);
  Zero-CFG and Anti-CFG are options, no release ships them as defaults.
* ``fake_level = loss``: the fake score network trains at the loss levels
  ``sigmoid(N(ln 2, 1.6))`` (SiD-DiT's fake-score block draws with the same
  ``logit_mean / logit_std``); ``teacher`` is the teacher's own ``sigmoid(N(0, 1))``.
* GAN off (``gan_weight = 0``; SiD-DiT ``--train_diffusiongan`` defaults off). When on, the
  generator term carries the same scale ``w`` and ``gan_loss_scaling = lsg_gan / lsg = 1 / 100``
  relative to the SiD term (SiD-DiT: ``0.5 L_SiD * 100 + 0.5 L_GAN * 1``, both as sums over
  elements / batch), logits clamped to +-10; the release also holds the generator for its first
  20 k images and adds the GAN after 40 k (``sid.gan_warmup`` here counts generator updates).

Guidance (``sid.guidance``):

* ``standard``: teacher with ``w_r = sid.real_cfg_scale``, fake with ``c`` and
  ``w_f = sid.fake_cfg_scale``;
* ``zero_cfg``: teacher without CFG (``w_r = 1``), fake net *without conditioning*: it is
  trained and evaluated on the null condition;
* ``anti_cfg``: teacher with ``w_r = sid.real_cfg_scale``, fake with negative guidance
  ``w_f = sid.anti_cfg_scale`` (CFG on the fake score, ``F_u + w_f (F_c - F_u)``).

Aux update (one per generator update, ``train.aux_ratio = 1``)::

    L_aux = ||F(x_s, s, c_f) - sg(x_g)||^2 / s^2          (denoising loss, s per fake_level)
          + 0.5 [BCE(D(real_sigma), 1) + BCE(D(x_g,sigma), 0)]   (after the warm-up, if g > 0)

with real and fake re-noised at the same ``sigma`` (drawn like the loss level) and the same
noise, and ``D`` a logit head on the fake network's last hidden features. When the fake net is
evaluated with guidance (``w_f != 1``) it is trained with 10 % condition dropout so both
branches track the student (SiD-DiT instead trains the CFG-combined output). The student's step
levels are ``student.sigmas``; the paper's ``t_i = 1 - i/K`` equals the default schedule
(every ``N/K``-th level of the teacher's shifted schedule) only at shift 1 (for K = 2 at shift
3 the default is ``[1, 0.75]``, not ``[1, 0.5]``): set ``student.sigmas`` to reproduce it.

Config: ``sid`` (the loss), ``dm.fake_lr`` (fake score network), and from ``gan`` the head's
``lr`` and where real samples come from (``real`` / ``real_source``); the head's loss is
non-saturating and its share / warm-up are ``sid.gan_weight`` / ``sid.gan_warmup``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from fewstep.core.denoiser import Denoiser
from fewstep.core.noise_correction import is_epsilon_model
from fewstep.core.path import FlowPath, logit_normal_sigma
from fewstep.distill.config import DistillConfig, DMSpec, GanSpec
from fewstep.distill.context import Batch, DistillContext, Logs
from fewstep.distill.methods.base import FakeScoreMethod
from fewstep.distill.methods.registry import METHODS
from fewstep.distill.parts.builders import build_fake_score
from fewstep.distill.parts.fake_score import FakeScore
from fewstep.distill.parts.losses import SiDWeighting, d_loss, sid_loss, sid_weight
from fewstep.student.student import backward_simulate
from fewstep.utils.config_files import StrictModel

FAKE_COND_DROPOUT = 0.1
LOGIT_CLAMP = 10.0  # SiD-DiT clamps the diffusion-GAN logits to +-10


def default_weighting(teacher: Denoiser) -> SiDWeighting:
    """The SiD scale the authors use for ``teacher``'s kind: ``legacy`` for epsilon / VP
    teachers (SiD, SiD-LSG), ``one_minus_sigma`` for flow teachers (SiD-DiT)."""
    vp = hasattr(teacher, "min_one_minus_sigma") or hasattr(teacher, "alphas_cumprod")
    return "legacy" if is_epsilon_model(teacher) or vp else "one_minus_sigma"


class SiDSpec(StrictModel):
    """The SiD loss; defaults are the official releases' (module docstring)."""

    alpha: float = Field(1.0, description="SiD-DiT / SiD-LSG 1; SiD (EDM) 1.2")
    weighting: SiDWeighting | None = Field(None, description="per-sample scale; None: "
                                           "one_minus_sigma for flow teachers, legacy for "
                                           "epsilon / VP teachers")
    fake_level: Literal["loss", "teacher"] = Field("loss", description="fake-score training "
                                                   "levels: the loss law or the teacher's")
    guidance: Literal["standard", "zero_cfg", "anti_cfg"] = "standard"
    real_cfg_scale: float = 1.0
    fake_cfg_scale: float = Field(1.0, description="fake-net w for guidance=standard")
    anti_cfg_scale: float = Field(-0.5, description="fake-net w for anti_cfg (not published)")
    gan_weight: float = Field(0.0, ge=0.0, le=1.0, description="diffusion-GAN share g: "
                              "(1 - g) L_SiD + g L_GAN (0.5 = docs/methods.md §5); 0 disables")
    gan_warmup: int = Field(0, ge=0)
    gan_loss_scaling: float = Field(0.01, gt=0.0, description="GAN term relative to the SiD "
                                    "term (SiD-DiT lsg_gan / lsg = 1 / 100)")
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
class SiD(FakeScoreMethod[SiDConfig]):
    """Data and optimizers: :class:`FakeScoreMethod` (real samples for the GAN head; the fake
    score network at ``dm.fake_lr``, its head at ``gan.lr``)."""

    config_class = SiDConfig
    fake: FakeScore

    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        s = self.cfg.sid
        self.use_gan = s.gan_weight > 0
        self.fake = build_fake_score(ctx, gan_head=self.use_gan)
        self.real_w = 1.0 if s.guidance == "zero_cfg" else s.real_cfg_scale
        self.fake_w = {"zero_cfg": 1.0, "standard": s.fake_cfg_scale,
                       "anti_cfg": s.anti_cfg_scale}[s.guidance]
        self.weighting: SiDWeighting = s.weighting or default_weighting(ctx.teacher)

    # ------------------------------------------------------------ declarations
    @classmethod
    def graph_forwards(cls, cfg: DistillConfig) -> int:
        return 3  # student step + teacher and fake score with gradient to their input

    # ------------------------------------------------------------ pieces
    def loss_sigma(self, n: int) -> Tensor:
        """``(n,)`` loss noise levels ``sigmoid(N(mean, std^2))`` clamped to ``[c, 1 - c]``."""
        s = self.cfg.sid
        sig = logit_normal_sigma(n, s.sigma_mean, s.sigma_std, generator=self.ctx.generator)
        return sig.to(self.ctx.device).clamp(s.sigma_clamp, 1.0 - s.sigma_clamp)

    def fake_cond(self, cond: Any) -> Any:
        """The fake net's condition: the null condition under Zero-CFG, else ``cond``."""
        if self.cfg.sid.guidance == "zero_cfg":
            return self.fake.den.null_cond(cond)
        return cond

    def fake_pred(self, x_t: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        """``f_psi``: the fake net's (guided) x0 prediction per ``sid.guidance``."""
        return self.fake.guided(x_t, sigma, self.fake_cond(cond), self.fake_w)

    def real_pred(self, x_t: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        """``f_phi``: the teacher's (guided) x0 prediction."""
        return self.ctx.teacher.guided(x_t, sigma, cond, self.real_w)

    def gan_on(self, step: int) -> bool:
        return self.use_gan and step >= self.cfg.sid.gan_warmup

    # ------------------------------------------------------------ losses
    def generator_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        s, gen = self.cfg.sid, self.ctx.generator
        k, _, _, x_g = backward_simulate(self.ctx.student, batch.noise, batch.cond, gen)
        sigma = self.loss_sigma(x_g.shape[0])
        x_t = FlowPath.add_noise(x_g, self.ctx.randn_like(x_g), sigma)
        f_r = self.real_pred(x_t, sigma, batch.cond)
        f_f = self.fake_pred(x_t, sigma, batch.cond)
        scale = sid_weight(x_g, f_r, sigma, self.weighting)
        l_sid = sid_loss(x_g, f_r, f_f, s.alpha, weight=scale, legacy=False)
        logs: Logs = {"g_sid": l_sid.detach(), "step_k": torch.tensor(float(k))}
        total = l_sid
        if self.gan_on(step):
            logits = self.fake.logits(x_t, sigma, self.fake_cond(batch.cond))
            bce = F.softplus(-logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP))
            logs["g_adv"] = s.gan_loss_scaling * (scale * bce).mean()
            total = (1.0 - s.gan_weight) * l_sid + s.gan_weight * logs["g_adv"]
        logs["g_total"] = total.detach()
        return total, logs

    def aux_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        gen = self.ctx.generator
        with torch.no_grad():
            x_g = backward_simulate(self.ctx.student, batch.noise, batch.cond, gen)[3]
        fc = self.fake_cond(batch.cond)
        drop = FAKE_COND_DROPOUT if self.fake_w != 1.0 else 0.0
        level = self.loss_sigma(x_g.shape[0]) if self.cfg.sid.fake_level == "loss" else None
        logs: Logs = {"fake_loss": self.fake.loss(x_g, fc, gen, cond_dropout=drop,
                                                  null_cond=self.fake.den.null_cond(fc),
                                                  sigma=level)}
        total = logs["fake_loss"]
        if self.gan_on(step):
            sigma = self.loss_sigma(x_g.shape[0])
            assert batch.real is not None  # data_needs(): real samples when use_gan
            eps = self.ctx.randn_like(x_g)  # SiD-DiT: real and fake share sigma and noise
            eps_r = eps if batch.real.shape == x_g.shape else self.ctx.randn_like(batch.real)
            lr = self.fake.logits(FlowPath.add_noise(batch.real, eps_r, sigma), sigma,
                                  self.fake_cond(batch.real_cond))
            lf = self.fake.logits(FlowPath.add_noise(x_g, eps, sigma), sigma, fc)
            logs["d_loss"] = 0.5 * d_loss(lr.clamp(-LOGIT_CLAMP, LOGIT_CLAMP),
                                          lf.clamp(-LOGIT_CLAMP, LOGIT_CLAMP), "non_saturating")
            logs["d_real"], logs["d_fake"] = lr.mean().detach(), lf.mean().detach()
            total = total + logs["d_loss"]
        return total, logs
