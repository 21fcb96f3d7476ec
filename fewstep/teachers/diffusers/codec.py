"""Latents <-> images through a pipeline's VAE, any class (AutoencoderKL, AutoencoderDC, ...).

Only ``vae.encode`` / ``vae.decode`` and the VAE config's own factors are used (never
``block_out_channels`` or ``latent_dist`` of one class):

* ``latents_mean`` / ``latents_std`` in the config: ``z = x * std / scaling_factor + mean``
  (per channel), as the SDXL / Qwen-Image pipelines decode;
* otherwise ``z = x / scaling_factor + shift_factor`` (missing factors: 1 and 0).

:func:`encode` inverts it; its posterior is ``latent_dist.mode()`` when the output has one (KL
VAEs) and the deterministic ``latent`` otherwise (DC-AE). Images are ``(B, 3, H, W)`` in
``[-1, 1]``, latents ``(B, C, H / f, W / f)`` in fewstep's layout. A family entry's ``decode``
replaces :func:`decode` (e.g. Flux.2's batch-norm statistics, Kandinsky 3's MoVQ); the pipeline's
own decoding is the reference (``fewstep teacher check`` compares them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def _factors(vae: Any, x: Tensor) -> tuple[Tensor | float, Tensor | float, float]:
    cfg = vae.config
    scale = float(cfg.get("scaling_factor") or 1.0)
    mean, std = cfg.get("latents_mean"), cfg.get("latents_std")
    if mean is not None and std is not None:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape),
                torch.tensor(std, dtype=x.dtype, device=x.device).view(shape), scale)
    return float(cfg.get("shift_factor") or 0.0), 1.0, scale


def _dtype(vae: nn.Module) -> torch.dtype:
    return next(vae.parameters()).dtype


@torch.no_grad()
def decode(pipe: Any, latents: Tensor) -> Tensor:
    """Latents -> images in about ``[-1, 1]`` (the VAE's dtype) through ``pipe.vae``."""
    vae = pipe.vae
    shift, std, scale = _factors(vae, latents)
    z = latents * std / scale + shift
    return vae.decode(z.to(_dtype(vae)), return_dict=False)[0]


@torch.no_grad()
def encode(pipe: Any, images: Tensor) -> Tensor:
    """Images in ``[-1, 1]`` -> latents (the posterior's mode) through ``pipe.vae``."""
    vae = pipe.vae
    out = vae.encode(images.to(_dtype(vae)))
    out = out[0] if isinstance(out, tuple) else out
    dist = getattr(out, "latent_dist", None)
    z = dist.mode() if dist is not None else getattr(out, "latent", out)
    shift, std, scale = _factors(vae, z)
    return (z - shift) * scale / std


class LatentCodec:
    """:func:`decode` / :func:`encode` bound to a pipeline (``decode_fn``: a family entry's)."""

    def __init__(self, pipe: Any, decode_fn: Callable[[Any, Tensor], Tensor] | None = None
                 ) -> None:
        self.pipe = pipe
        self.decode_fn = decode_fn or decode

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        return self.decode_fn(self.pipe, latents)

    def encode(self, images: Tensor) -> Tensor:
        return encode(self.pipe, images)


__all__ = ["LatentCodec", "decode", "encode"]
