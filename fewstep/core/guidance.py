"""Classifier-free guidance.

Our convention (METHODS.md §1): ``d = d_u + w (d_c - d_u)``; ``w = 1`` means no guidance,
``w = 0`` is the unconditional prediction, ``w < 0`` is anti-guidance. Guidance is linear in the
prediction, so applying it to ``x0_hat`` equals applying it to ``v`` or ``eps`` at the same
``(x_sigma, sigma)``.

Z-Image's pipeline writes ``pred = pos + g (pos - neg)``, i.e. ``w = 1 + g``: see
:func:`w_from_zimage_scale`.
"""

from __future__ import annotations

from torch import Tensor


def cfg_combine(d_uncond: Tensor, d_cond: Tensor, w: float) -> Tensor:
    """Return ``d_u + w (d_c - d_u)``."""
    return d_uncond + w * (d_cond - d_uncond)


def w_from_zimage_scale(g: float) -> float:
    """Convert Z-Image's ``guidance_scale`` g (``pos + g (pos - neg)``) to our ``w = 1 + g``."""
    return 1.0 + g


def zimage_scale_from_w(w: float) -> float:
    """Inverse of :func:`w_from_zimage_scale`."""
    return w - 1.0
