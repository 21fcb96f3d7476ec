"""LADD (docs/methods.md §6b): latent adversarial diffusion distillation (Sauer et al. 2024, the
SD3-Turbo recipe) -- a purely adversarial baseline: teacher samples as "real", discriminator
heads on the frozen teacher's features at re-noised inputs, no distribution-matching term, no
unrolling between student steps.

Generator update on a batch of teacher pairs (``x_T``: the teacher's sample, condition ``c``)::

    k ~ U{0..K-1}  (per sample with a shared student -- LADD's default here -- else per batch)
    x_k = (1 - s_k) x_T + s_k eps                    (the student's input at its level s_k)
    x0  = G_k(x_k, s_k, c)
    s^ ~ sigmoid(N(ladd.sigma_mean = 1, ladd.sigma_std = 1))    (biased to high noise)
    L_G = gan.weight * sum_h g(D_h(x0_{s^}, s^, c)),   x0_{s^} = (1 - s^) x0 + s^ eps'

with ``g`` the ``gan.loss`` generator loss (``hinge``, LADD's: ``-D``), summed over the heads
``D_h``, one per teacher block in ``gan.layers`` on the frozen teacher's features
(``gan.discriminator =
teacher_features``), conditioned on ``s^`` and the class label. The gradient reaches the
student through the frozen teacher, never its weights. At ``k = 0`` (``s_0 = 1``) the input is
pure noise, as in sampling.

Aux update (``train.aux_ratio`` per generator update), on detached student outputs ``x0``
built as above and real samples ``r`` (the teacher's, from its cache; ``gan.real = dataset`` is
the ablation), each re-noised at its own ``s^``::

    L_D = sum_h d(D_h(r_{s^}), D_h(x0_{s^}))
        (hinge: mean relu(1 - D_h(r)) + mean relu(1 + D_h(x0)))

The per-head sum is the published loss (ADD, Sauer et al. 2023, arXiv 2311.17042, eqs. 2-3:
``L_D = sum_k E[relu(1 - D_k(x))] + E[relu(1 + D_k(x_hat))]``, ``L_G = -sum_k E[D_k(x_hat)]``,
which LADD, arXiv 2403.12015, keeps with heads on the teacher's features). No official code
exists. A hinge on the *mean* of the heads (fewstep before) equals it only while no head is
past the margin.

Config: ``ladd`` (the discriminator's noise distribution) and ``gan`` (``weight``, ``loss``,
``real`` / ``real_source``, ``discriminator``, ``layers``, ``head_hidden``, ``lr``;
``sigma_min`` / ``sigma_max`` / ``warmup`` are not read). The student defaults to
``parameterization: shared`` (LADD's single network); sampling is the usual K-step sampler.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from fewstep.core.path import FlowPath, logit_normal_sigma
from fewstep.distill.config import DistillConfig, GanSpec
from fewstep.distill.context import AuxUpdates, Batch, DataNeeds, DistillContext, Logs
from fewstep.distill.methods.base import DistillMethod
from fewstep.distill.methods.registry import METHODS
from fewstep.distill.parts.builders import build_discriminator
from fewstep.distill.parts.losses import d_loss, g_loss
from fewstep.student.spec import StudentSpec
from fewstep.student.student import random_step
from fewstep.utils.config_files import StrictModel


class LADDSpec(StrictModel):
    sigma_mean: float = Field(1.0, description="discriminator noise level s^ ~ "
                              "sigmoid(N(mean, std^2)); 1 biases it to high noise")
    sigma_std: float = Field(1.0, gt=0.0)


class LADDStudentSpec(StudentSpec):
    """The student section with LADD's default: one network shared by all steps."""

    parameterization: Literal["decoupled", "lora", "shared"] = "shared"


class LADDGanSpec(GanSpec):
    """The GAN block with LADD's default loss (hinge)."""

    loss: Literal["hinge", "non_saturating"] = "hinge"


class LADDConfig(DistillConfig):
    method: Literal["ladd"] = "ladd"
    student: LADDStudentSpec = LADDStudentSpec()
    gan: LADDGanSpec = LADDGanSpec()
    ladd: LADDSpec = LADDSpec()

    @model_validator(mode="after")
    def _gan_on(self) -> LADDConfig:
        if self.gan.weight <= 0:
            raise ValueError("gan.weight: must be > 0 for method ladd (its only loss term)")
        return self


@METHODS.register("ladd")
class LADD(DistillMethod[LADDConfig]):

    config_class = LADDConfig
    def __init__(self, ctx: DistillContext) -> None:
        super().__init__(ctx)
        self.disc = build_discriminator(ctx)

    # ------------------------------------------------------------ declarations
    def data_needs(self) -> DataNeeds:
        cfg = self.cfg
        return DataNeeds(teacher_pairs=True, real=cfg.gan.real_from())

    def aux_updates(self) -> AuxUpdates:
        cfg = self.cfg
        params = [p for p in self.disc.parameters() if p.requires_grad]
        return self.aux_updates_for([{"params": params, "lr": cfg.gan.lr}])

    @classmethod
    def graph_forwards(cls, cfg: DistillConfig) -> int:
        # one student step, plus the frozen teacher's feature pass (gradient to its input)
        return 1 + (1 if cls.config_of(cfg).gan.discriminator == "teacher_features" else 0)

    # ------------------------------------------------------------ pieces
    def student_x0(self, x_teacher: Tensor, cond: Any) -> tuple[Tensor, Tensor]:
        """``(x0 (B, ...), s_k (B,))``: the student's prediction from teacher samples
        re-noised to its step levels (with gradient)."""
        st, gen = self.ctx.student, self.ctx.generator
        b = x_teacher.shape[0]
        sig = st.sigmas.to(x_teacher.device)
        if st.parameterization == "shared":  # one network: a level per sample
            k = torch.randint(0, st.num_steps, (b,), generator=gen).to(x_teacher.device)
            s_k, step = sig[k], 0
        else:  # one step module per batch (every rank runs the same one)
            step = random_step(st, gen)
            s_k = sig[step].expand(b)
        x_k = FlowPath.add_noise(x_teacher, self.ctx.randn_like(x_teacher), s_k)
        return st(step, x_k, s_k, cond), s_k

    def disc_sigma(self, n: int) -> Tensor:
        """``(n,)`` discriminator levels ``s^ ~ sigmoid(N(mean, std^2))``."""
        s = self.cfg.ladd
        sig = logit_normal_sigma(n, s.sigma_mean, s.sigma_std, generator=self.ctx.generator)
        return sig.to(self.ctx.device)

    def logits(self, x: Tensor, cond: Any) -> Tensor:
        """Every head ``D_h`` at ``x`` re-noised to a fresh ``s^`` (fresh noise), ``(H, B)``."""
        sigma = self.disc_sigma(x.shape[0])
        x_s = FlowPath.add_noise(x, self.ctx.randn_like(x), sigma)
        return self.disc.head_logits(x_s, sigma, cond)

    # ------------------------------------------------------------ losses
    def generator_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        g: GanSpec = self.cfg.gan
        assert batch.teacher_sample is not None  # data_needs(): teacher pairs
        x0, s_k = self.student_x0(batch.teacher_sample, batch.cond)
        terms = [g_loss(lh, g.loss) for lh in self.logits(x0, batch.cond)]
        adv = sum(terms[1:], terms[0])  # per-head losses (H >= 1)
        total = g.weight * adv
        return total, {"g_adv": adv.detach(), "g_total": total.detach(),
                       "student_sigma": s_k.mean()}

    def aux_loss(self, batch: Batch, step: int) -> tuple[Tensor, Logs]:
        assert batch.teacher_sample is not None and batch.real is not None  # data_needs()
        with torch.no_grad():
            x0, _ = self.student_x0(batch.teacher_sample, batch.cond)
        lr = self.logits(batch.real, batch.real_cond)
        lf = self.logits(x0, batch.cond)
        kind = self.cfg.gan.loss
        terms = [d_loss(a, b, kind) for a, b in zip(lr, lf, strict=True)]
        loss = sum(terms[1:], terms[0])  # per-head losses (H >= 1)
        return loss, {"d_loss": loss.detach(), "d_real": lr.mean().detach(),
                      "d_fake": lf.mean().detach()}
