"""The rectified-flow (flow-matching) probability path and conversions between parameterisations.

Convention (METHODS.md §1): ``sigma`` runs from 1 (pure noise) to 0 (data).

.. math::

    x_\\sigma = (1 - \\sigma) x_0 + \\sigma \\varepsilon, \\qquad
    v = \\varepsilon - x_0 = \\frac{d x_\\sigma}{d \\sigma}

so ``x0 = x_sigma - sigma * v`` and ``eps = x_sigma + (1 - sigma) * v``.

Shapes: ``x`` is ``(B, ...)``; ``sigma`` is a float, a 0-d tensor or ``(B,)`` and is broadcast
over the trailing dimensions of ``x``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expand_like(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast ``sigma`` (scalar or ``(B,)``) to ``(B, 1, ..., 1)`` matching ``x.ndim``."""
    if not torch.is_tensor(sigma):
        return torch.full((x.shape[0],) + (1,) * (x.ndim - 1), float(sigma), device=x.device,
                          dtype=x.dtype)
    sigma = sigma.to(device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class FlowPath:
    """Stateless helpers for the linear path ``x_sigma = (1 - sigma) x0 + sigma eps``."""

    @staticmethod
    def add_noise(x0: Tensor, eps: Tensor, sigma: Tensor | float) -> Tensor:
        """Return ``x_sigma = (1 - sigma) x0 + sigma eps``."""
        s = expand_like(sigma, x0)
        return (1.0 - s) * x0 + s * eps

    @staticmethod
    def velocity(x0: Tensor, eps: Tensor) -> Tensor:
        """Target velocity ``v = eps - x0`` (constant along the path)."""
        return eps - x0

    @staticmethod
    def x0_from_velocity(x: Tensor, sigma: Tensor | float, v: Tensor) -> Tensor:
        """``x0 = x_sigma - sigma v``."""
        return x - expand_like(sigma, x) * v

    @staticmethod
    def eps_from_velocity(x: Tensor, sigma: Tensor | float, v: Tensor) -> Tensor:
        """``eps = x_sigma + (1 - sigma) v``."""
        return x + (1.0 - expand_like(sigma, x)) * v

    @staticmethod
    def velocity_from_x0(x: Tensor, sigma: Tensor | float, x0: Tensor) -> Tensor:
        """``v = (x_sigma - x0) / sigma``. Undefined at ``sigma = 0``."""
        return (x - x0) / expand_like(sigma, x)

    @staticmethod
    def eps_from_x0(x: Tensor, sigma: Tensor | float, x0: Tensor) -> Tensor:
        """``eps = (x_sigma - (1 - sigma) x0) / sigma``. Undefined at ``sigma = 0``."""
        s = expand_like(sigma, x)
        return (x - (1.0 - s) * x0) / s

    @staticmethod
    def x0_from_eps(x: Tensor, sigma: Tensor | float, eps: Tensor) -> Tensor:
        """``x0 = (x_sigma - sigma eps) / (1 - sigma)``. Singular at ``sigma = 1``."""
        s = expand_like(sigma, x)
        return (x - s * eps) / (1.0 - s)


def shift_sigma(sigma: Tensor | float, shift: float) -> Tensor | float:
    """Time shift used by SD3 / Z-Image: ``sigma' = s sigma / (1 + (s - 1) sigma)``.

    ``shift > 1`` spends more of the schedule at high noise. ``shift = 1`` is the identity.
    """
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def logit_normal_sigma(n: int, mean: float = 0.0, std: float = 1.0, *,
                       generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> Tensor:
    """Draw ``(n,)`` noise levels ``sigma = sigmoid(N(mean, std^2))`` (SD3 / SiD flow default)."""
    z = torch.randn(n, generator=generator, device=generator.device if generator else device)
    return torch.sigmoid(z.to(device) * std + mean)


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``x`` drawn from ``generator`` (on the generator's own
    device, so a CPU generator can drive GPU training), then moved to ``x``'s device and dtype."""
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev).to(x.device, x.dtype)
