"""The fake score network: a trainable copy of the teacher that tracks the *student's*
distribution (DMD / DMD2 / SiD), optionally with a GAN head on its own features.

Its training objective is the teacher's flow-matching loss on detached student samples:
``sigma ~ sigmoid(N(0, 1))`` (or the caller's levels: SiD trains it at its loss levels),
``x_sigma = (1 - sigma) sg(x_g) + sigma eps``,
``||F(x_sigma) - sg(x_g)||^2 / sigma^2``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from fewstep.core.conditioning import where_cond
from fewstep.core.denoiser import Denoiser
from fewstep.core.path import FlowPath, logit_normal_sigma
from fewstep.distill.parts.discriminator import FeatureHead, _labels
from fewstep.distill.parts.losses import denoising_loss


def feature_dims(den: Denoiser, example: Tensor, cond: Any) -> list[int]:
    """Channel size of each of ``den.features`` for one example batch (probe, no grad)."""
    with torch.no_grad():
        feats = den.features(example, torch.full((example.shape[0],), 0.5,
                                                 device=example.device), cond)
    return [int(f.shape[-1]) for f in feats]


class FakeScore(nn.Module):
    """Trainable copy of ``teacher`` with an optional logit head on its last features.

    ``forward(x, sigma, cond) -> x0_hat``; ``logits(x, sigma, cond) -> (B,)``.
    """

    def __init__(self, teacher: Denoiser, gan_head: bool = False, num_classes: int = 0,
                 example: Tensor | None = None, example_cond: Any = None) -> None:
        super().__init__()
        # trainable: float32 master weights whatever the (frozen) teacher's dtype
        self.den = copy.deepcopy(teacher).float().requires_grad_(True).train()
        self.head = None
        if gan_head:
            if example is None:
                raise ValueError("a GAN head needs an example batch to size its input")
            dim = feature_dims(self.den, example, example_cond)[-1]
            self.head = FeatureHead(dim, 128, num_classes)

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        with record_function("fake_score"):
            return self.den(x, sigma, cond)

    def guided(self, x: Tensor, sigma: Tensor, cond: Any, w: float) -> Tensor:
        """CFG on the fake score (``w = 0`` drops the condition: Zero-CFG)."""
        with record_function("fake_score"):
            return self.den.guided(x, sigma, cond, w)

    def logits(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        if self.head is None:
            raise RuntimeError("this fake score network has no GAN head")
        with record_function("fake_score"):
            return self.head(self.den.features(x, sigma, cond)[-1], sigma, _labels(cond))

    def noised_logits(self, x: Tensor, sigma: Tensor, cond: Any = None,
                      generator: torch.Generator | None = None) -> Tensor:
        """Diffusion-GAN logits ``(B,)``: ``x`` re-noised to ``sigma (B,)`` with fresh noise.
        Gradient reaches ``x`` (and the head / trunk unless frozen)."""
        eps = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        return self.logits(FlowPath.add_noise(x, eps, sigma), sigma, cond)

    def loss(self, x_g: Tensor, cond: Any, generator: torch.Generator | None = None,
             cond_dropout: float = 0.0, null_cond: Any = None,
             sigma: Tensor | None = None) -> Tensor:
        """Denoising loss on detached generator samples ``x_g`` ``(B, ...)`` at the levels
        ``sigma (B,)`` (default: the teacher's ``sigmoid(N(0, 1))``)."""
        x0 = x_g.detach()
        b = x0.shape[0]
        if sigma is None:
            sigma = logit_normal_sigma(b, generator=generator)
        sigma = sigma.to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        if cond_dropout > 0 and cond is not None and null_cond is not None:
            drop = (torch.rand(b, generator=generator) < cond_dropout).to(x0.device)
            cond = where_cond(drop, null_cond, cond)  # labels or e.g. PromptEmbeds
        return denoising_loss(self(FlowPath.add_noise(x0, eps, sigma), sigma, cond), x0, sigma)


def fake_score_groups(fake: FakeScore, fake_lr: float, gan_lr: float) -> list[dict[str, Any]]:
    """Optimizer groups of a fake score network: its denoiser at ``fake_lr`` and, when it has
    a GAN head (DMD2, SiD), the head at the GAN block's ``gan_lr``."""
    groups: list[dict[str, Any]] = [{"params": list(fake.den.parameters()), "lr": fake_lr}]
    if fake.head is not None:
        groups.append({"params": list(fake.head.parameters()), "lr": gan_lr})
    return groups

