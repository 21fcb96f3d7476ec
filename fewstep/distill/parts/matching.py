"""Distribution matching (DMD, docs/methods.md §4) with its fake score network.

For a generator sample ``x``: draw ``sigma_t ~ U[sigma_min, sigma_max]``, ``x_t`` = noised
``x``; with no gradient, ``real = teacher(x_t)`` (guided, w = ``cfg_scale``) and
``fake = F(x_t)`` (no guidance); ``grad = (fake - real) / mean|x - real|`` and
``L_DM = 0.5 ||x - sg(x - grad)||^2``. The fake score ``F`` learns the student's distribution
with the denoising loss on detached samples (:class:`fewstep.distill.parts.fake_score.FakeScore`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from fewstep.core.denoiser import Denoiser
from fewstep.core.path import FlowPath
from fewstep.distill.parts.fake_score import FakeScore
from fewstep.distill.parts.losses import dmd_gradient, dmd_loss


class DistributionMatching(nn.Module):
    """The DM term; ``fake`` is trainable, ``teacher`` is kept by reference (frozen)."""

    def __init__(self, teacher: Denoiser, fake: FakeScore, cfg_scale: float,
                 sigma_min: float, sigma_max: float) -> None:
        super().__init__()
        self._teacher = [teacher]
        self.fake = fake
        self.cfg_scale = cfg_scale
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def loss(self, x: Tensor, cond: Any, generator: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor]:
        """``(L_DM, grad)`` for generator samples ``x`` (``grad`` carries no graph)."""
        b = x.shape[0]
        u = torch.rand(b, generator=generator).to(x.device)
        sigma = self.sigma_min + (self.sigma_max - self.sigma_min) * u
        eps = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        with torch.no_grad():
            xt = FlowPath.add_noise(x.detach(), eps, sigma)
            with record_function("teacher_forward"):
                real = self._teacher[0].guided(xt, sigma, cond, self.cfg_scale)
            fake = self.fake(xt, sigma, cond)
            grad = dmd_gradient(x.detach(), real, fake)
        return dmd_loss(x, grad), grad
