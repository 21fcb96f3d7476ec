"""Tiny autoencoders (spatial factor 2 unless noted) for the tiny pipelines.

Every builder is called inside the caller's seeded RNG scope; sizes are a few thousand to
~60 k parameters. ``scaling_factor`` / ``shift_factor`` / ``latents_mean`` / ``latents_std``
are set to the real checkpoints' kind of values (not 1 / 0) so a decode path that forgets one
of them is caught.
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.autoencoder_dc import AutoencoderDC
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.autoencoder_kl_flux2 import AutoencoderKLFlux2
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import AutoencoderKLQwenImage
from diffusers.models.autoencoders.vq_model import VQModel


def kl(latent_channels: int = 4, scaling_factor: float = 0.18215,
       shift_factor: float | None = None, width: int = 8, blocks: int = 2) -> AutoencoderKL:
    """``AutoencoderKL`` with ``blocks`` blocks (factor ``2**(blocks-1)``): channels
    ``(width, 2*width)`` for two blocks, ``width`` each otherwise."""
    channels = [width, 2 * width] if blocks == 2 else [width] * blocks
    return AutoencoderKL(in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * blocks,
                         up_block_types=["UpDecoderBlock2D"] * blocks,
                         block_out_channels=channels, layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=width, sample_size=32,
                         scaling_factor=scaling_factor, shift_factor=shift_factor).eval()


def kl_flux2(latent_channels: int = 4) -> AutoencoderKLFlux2:
    """``AutoencoderKLFlux2`` (factor 2 conv + 2x2 patchify with batch-norm statistics); the
    batch-norm running mean / var are set away from 0 / 1 so a decode path that skips the
    pipeline's de-normalisation is caught (they are persistent buffers, saved and reloaded)."""
    vae = AutoencoderKLFlux2(in_channels=3, out_channels=3,
                             down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                             layers_per_block=1, latent_channels=latent_channels,
                             norm_num_groups=8, sample_size=32, use_quant_conv=False,
                             use_post_quant_conv=False).eval()
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.1 * torch.randn_like(vae.bn.running_mean))
        vae.bn.running_var.copy_(1.0 + 0.5 * torch.rand_like(vae.bn.running_var))
    return vae


def kl_qwenimage(z_dim: int = 4) -> AutoencoderKLQwenImage:
    """``AutoencoderKLQwenImage`` (causal 3D conv VAE, factor 4 = 2**len(temperal_downsample))
    with non-trivial ``latents_mean`` / ``latents_std``."""
    return AutoencoderKLQwenImage(base_dim=z_dim * 2, z_dim=z_dim, dim_mult=[1, 2, 2],
                                  num_res_blocks=1, temperal_downsample=[False, True],
                                  latents_mean=[0.1 * (i - z_dim / 2) for i in range(z_dim)],
                                  latents_std=[1.0 + 0.25 * i for i in range(z_dim)]).eval()


def dc(latent_channels: int = 4, scaling_factor: float = 0.41407) -> AutoencoderDC:
    """``AutoencoderDC`` (Sana's deep-compression AE), two stages = factor 2."""
    return AutoencoderDC(in_channels=3, latent_channels=latent_channels, attention_head_dim=2,
                         encoder_block_types=("ResBlock", "EfficientViTBlock"),
                         decoder_block_types=("ResBlock", "EfficientViTBlock"),
                         encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                         encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                         encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
                         downsample_block_type="conv", upsample_block_type="interpolate",
                         decoder_norm_types="rms_norm", decoder_act_fns="silu",
                         scaling_factor=scaling_factor).eval()


def movq(latent_channels: int = 4) -> VQModel:
    """Kandinsky's MoVQ-style ``VQModel`` (spatially-normalised decoder), factor 2; width 32
    because ``SpatialNorm`` hard-codes 32 groups (~0.23 M parameters)."""
    return VQModel(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                   up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
                   block_out_channels=[32, 32], layers_per_block=1, latent_channels=latent_channels,
                   num_vq_embeddings=12, norm_num_groups=8, vq_embed_dim=latent_channels,
                   norm_type="spatial").eval()


__all__ = ["dc", "kl", "kl_flux2", "kl_qwenimage", "movq"]
