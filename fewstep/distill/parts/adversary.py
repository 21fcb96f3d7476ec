"""The adversarial term shared by Turbo++ and DMD2 (diffusion-GAN style).

Both real and fake samples are re-noised to ``sigma_d ~ U[sigma_min, sigma_max]`` (independent
per sample, fresh noise) and the discriminator sees ``sigma_d``. In Turbo++ the "real" samples
are the *teacher's* generations (distribution-aligned); the ablation uses data set images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from fewstep.core.path import FlowPath
from fewstep.distill.parts.losses import GanLoss, d_loss, g_loss


class Adversary(nn.Module):
    """Wrap a discriminator ``D(x_sigma, sigma, cond) -> (B,)`` with re-noising and losses."""

    def __init__(self, discriminator: nn.Module, loss: GanLoss, sigma_min: float,
                 sigma_max: float) -> None:
        super().__init__()
        self.disc = discriminator
        self.kind = loss
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def renoise(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``(x_sigma_d, sigma_d)`` with ``sigma_d ~ U[sigma_min, sigma_max]`` per sample."""
        b = x.shape[0]
        u = torch.rand(b, generator=generator).to(x.device)
        sigma = self.sigma_min + (self.sigma_max - self.sigma_min) * u
        eps = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        return FlowPath.add_noise(x, eps, sigma), sigma

    def logits(self, x: Tensor, cond: Any, generator: torch.Generator | None) -> Tensor:
        xs, sigma = self.renoise(x, generator)
        with record_function("discriminator"):
            return self.disc(xs, sigma, cond)

    def discriminator_loss(self, real: Tensor, real_cond: Any, fake: Tensor, fake_cond: Any,
                           generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """D loss on detached inputs; also returns mean logits for logging.

        Real and fake are re-noised as two draws (in that order) and, when their conditions
        can be concatenated (both tensors or both ``None``), go through the discriminator as one
        batch: per-sample networks give the same logits, in one pass instead of two."""
        both = (real_cond is None and fake_cond is None) or (
            torch.is_tensor(real_cond) and torch.is_tensor(fake_cond))
        if not both:
            lr = self.logits(real.detach(), real_cond, generator)
            lf = self.logits(fake.detach(), fake_cond, generator)
        else:
            xr, sr = self.renoise(real.detach(), generator)
            xf, sf = self.renoise(fake.detach(), generator)
            cond = None if real_cond is None else torch.cat([real_cond, fake_cond])
            with record_function("discriminator"):
                lr, lf = self.disc(torch.cat([xr, xf]), torch.cat([sr, sf]), cond).split(
                    [xr.shape[0], xf.shape[0]])
        return d_loss(lr, lf, self.kind), {"d_real": lr.mean().detach(),
                                           "d_fake": lf.mean().detach()}

    def generator_loss(self, fake: Tensor, cond: Any,
                       generator: torch.Generator | None = None) -> Tensor:
        """G loss; gradient reaches ``fake`` through the (frozen-for-G) discriminator."""
        return g_loss(self.logits(fake, cond, generator), self.kind)
