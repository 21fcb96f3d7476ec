"""Pixel <-> latent conversion through a pipeline's VAE.

``latent = (z - shift) * scale`` where ``z`` is a sample (or the mode) of the VAE's posterior,
``scale = vae.config.scaling_factor`` and ``shift = vae.config.shift_factor`` (0 when the VAE has
none, e.g. SD 1.x). Decoding inverts it: ``vae.decode(latent / scale + shift)``. This matches
``ZImagePipeline`` (``latents / scaling_factor + shift_factor`` before ``vae.decode``).

Images are ``(B, 3, H, W)`` in ``[-1, 1]``; latents are ``(B, C_lat, H / f, W / f)``. Inputs are
cast to the VAE's dtype and outputs returned in the VAE's dtype (cast yourself if needed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def vae_factors(vae: nn.Module) -> tuple[float, float]:
    """``(scaling_factor, shift_factor)`` of a diffusers VAE (shift 0 if absent/None)."""
    cfg = vae.config
    scale = getattr(cfg, "scaling_factor", None)
    shift = getattr(cfg, "shift_factor", None)
    return float(scale if scale is not None else 1.0), float(shift or 0.0)


def _vae_dtype(vae: nn.Module) -> torch.dtype:
    return next(vae.parameters()).dtype


def encode(vae: nn.Module, images: Tensor, sample: bool = False,
           generator: torch.Generator | None = None) -> Tensor:
    """Images in ``[-1, 1]`` -> scaled, shifted latents. ``sample=False`` uses the posterior mode
    (deterministic); ``sample=True`` draws from it with ``generator``."""
    scale, shift = vae_factors(vae)
    dist = vae.encode(images.to(_vae_dtype(vae))).latent_dist
    z = dist.sample(generator) if sample else dist.mode()
    return (z - shift) * scale


def decode(vae: nn.Module, latents: Tensor) -> Tensor:
    """Scaled, shifted latents -> images (roughly in ``[-1, 1]``; clamp for display)."""
    scale, shift = vae_factors(vae)
    z = latents.to(_vae_dtype(vae)) / scale + shift
    return vae.decode(z, return_dict=False)[0]


class LatentCodec:
    """Bound :func:`encode` / :func:`decode` for one VAE (or any pipeline with ``.vae``)."""

    def __init__(self, vae_or_pipeline: Any) -> None:
        self.vae: nn.Module = getattr(vae_or_pipeline, "vae", vae_or_pipeline)
        self.scale, self.shift = vae_factors(self.vae)

    def encode(self, images: Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
        return encode(self.vae, images, sample=sample, generator=generator)

    def decode(self, latents: Tensor) -> Tensor:
        return decode(self.vae, latents)

    @property
    def spatial_factor(self) -> int:
        """Downsampling factor ``f`` (``2 ** (len(block_out_channels) - 1)``)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)


__all__ = ["LatentCodec", "decode", "encode", "vae_factors"]
