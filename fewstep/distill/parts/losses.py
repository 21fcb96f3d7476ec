"""Loss functions shared by the recipes. Each states what it returns and where gradients flow.

Shapes: logits are ``(B,)``; images ``(B, ...)``. All losses return a scalar (batch mean).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fewstep.core.path import expand_like

GanLoss = Literal["hinge", "non_saturating"]


def d_loss(real_logits: Tensor, fake_logits: Tensor, kind: GanLoss) -> Tensor:
    """Discriminator loss. hinge: ``relu(1 - D(r)) + relu(1 + D(f))``;
    non-saturating: ``softplus(-D(r)) + softplus(D(f))`` (= BCE with targets 1 / 0)."""
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if kind == "non_saturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def g_loss(fake_logits: Tensor, kind: GanLoss) -> Tensor:
    """Generator loss. hinge: ``-D(f)``; non-saturating: ``softplus(-D(f))``."""
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def dmd_gradient(x: Tensor, x0_real: Tensor, x0_fake: Tensor) -> Tensor:
    """DMD's per-sample normalised gradient ``(x0_fake - x0_real) / mean|x - x0_real|``.

    It points from the real (teacher) denoiser toward the fake one, so descending it moves ``x``
    toward the teacher's distribution. The normaliser is a per-sample mean over non-batch dims.
    """
    dims = tuple(range(1, x.ndim))
    norm = (x - x0_real).abs().mean(dim=dims, keepdim=True).clamp_min(1e-5)
    return (x0_fake - x0_real) / norm


def dmd_loss(x: Tensor, grad: Tensor) -> Tensor:
    """``0.5 ||x - sg(x - grad)||^2`` (element mean): its gradient w.r.t. ``x`` is
    ``grad / numel``. ``grad`` must carry no graph."""
    return 0.5 * F.mse_loss(x, (x - grad).detach(), reduction="mean")


def denoising_loss(x0_pred: Tensor, x0: Tensor, sigma: Tensor) -> Tensor:
    """Flow-matching loss written in x0 space: ``||x0_pred - x0||^2 / sigma^2`` equals the
    velocity MSE at the same point. ``sigma`` is ``(B,)``, clamped at 1e-2 for the weight."""
    w = 1.0 / expand_like(sigma, x0).clamp_min(1e-2) ** 2
    return (w * (x0_pred - x0) ** 2).mean()


SiDWeighting = Literal["one_minus_sigma", "legacy", "both"]


def sid_weight(x_g: Tensor, f_real: Tensor, sigma: Tensor, weighting: SiDWeighting) -> Tensor:
    """The SiD per-sample scale ``(B,)`` (no gradient), ``--weighting_scheme`` of SiD-DiT
    (apple-aiml-research/ml-sid-dit ``training/sid_dit_training_loop.py::training_loop``):

    * ``one_minus_sigma``: ``1 - sigma`` (SiD-DiT's ``1_minus_sigma``, its default);
    * ``legacy``: ``1 / max(mean|x_g - f_real|, 1e-5)`` (``sid_legacy``; the only weighting of
      SiD for EDM, ``training/sid_loss.py::SID_EDMLoss.generator_loss``, and of SiD-LSG);
    * ``both``: their product (fewstep's former default; no official release uses it)."""
    dims = tuple(range(1, x_g.ndim))
    with torch.no_grad():
        legacy = 1.0 / (x_g - f_real).abs().mean(dim=dims).clamp_min(1e-5)
        one_minus = (1.0 - sigma).to(legacy)
        if weighting == "one_minus_sigma":
            return one_minus
        if weighting == "legacy":
            return legacy
        if weighting == "both":
            return one_minus * legacy
    raise ValueError(f"unknown SiD weighting {weighting!r}")


def sid_loss(x_g: Tensor, f_real: Tensor, f_fake: Tensor, alpha: float,
             weight: Tensor | None = None, legacy: bool = True) -> Tensor:
    """SiD generator loss (docs/methods.md §5), element mean of
    ``w (f_r - f_f) * ((f_r - x_g) - alpha (f_r - f_f))``
    ``= w [(1 - alpha) (f_r - f_f)^2 + (f_r - f_f) (f_f - x_g)]`` with ``w`` the optional
    per-sample ``weight (B,)`` (no gradient), times ``1 / mean|x_g - f_r|`` (per sample, no
    gradient, clipped at 1e-5) when ``legacy``. ``f_real`` / ``f_fake`` must be computed from
    ``x_t`` (a noised ``x_g``) by frozen networks; gradient reaches ``x_g`` directly and through
    ``x_t`` inside ``f_real`` / ``f_fake``."""
    dims = tuple(range(1, x_g.ndim))
    with torch.no_grad():
        w = torch.ones(x_g.shape[0], device=x_g.device, dtype=x_g.dtype)
        if legacy:
            w = w / (x_g - f_real).abs().mean(dim=dims).clamp_min(1e-5)
        if weight is not None:
            w = w * weight.detach().to(w)
        w = expand_like(w, x_g)
    diff = f_real - f_fake
    return (w * diff * ((f_real - x_g) - alpha * diff)).mean()
