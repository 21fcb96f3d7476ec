"""Tiny offline variance-preserving (DDPM-family) text-to-image pipelines.

SD 1.x (epsilon, PNDM as SD 1.5 ships), SD 2.x (v-prediction, DDIM as SD 2.1 ships), SDXL
(Euler, two CLIP towers, pooled + time ids), PixArt-alpha / -Sigma (learned-variance DiT, T5,
DPM-Solver++), HunyuanDiT (BERT + T5, v-prediction DDPM, learned variance) and Kandinsky 3
(T5, Kandinsky3UNet, MoVQ, DDPM). Each ``build_*(seed)`` draws all weights from ``seed``;
schedulers carry the real checkpoints' configs (betas, spacing, offsets, prediction type).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HunyuanDiT2DModel,
    HunyuanDiTPipeline,
    Kandinsky3Pipeline,
    Kandinsky3UNet,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

from fewstep.testing import tiny_autoencoders as ae
from fewstep.testing import tiny_text_encoders as te


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body under ``torch.manual_seed(seed)`` without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def finish(pipe: Any) -> Any:
    """Eval mode for every module, progress bar off."""
    for c in pipe.components.values():
        if isinstance(c, torch.nn.Module):
            c.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sd_unet(cross: int, linear: bool = False, heads: Any = 8,
             **extra: Any) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross,
        attention_head_dim=heads, norm_num_groups=8, use_linear_projection=linear, **extra)


def build_sd15(seed: int = 0) -> StableDiffusionPipeline:
    """SD 1.x: epsilon UNet, CLIP ViT-L-style text tower (77 tokens), ``PNDMScheduler`` with SD
    1.5's config (PLMS, ``skip_prk_steps``, ``steps_offset=1``)."""
    with seeded(seed):
        tok = te.build_tokenizer("clip", 77)
        pipe = StableDiffusionPipeline(
            vae=ae.kl(4, 0.18215), text_encoder=te.clip_text(tok, 32), tokenizer=tok,
            unet=_sd_unet(32),
            scheduler=PNDMScheduler(beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear", skip_prk_steps=True,
                                    steps_offset=1, set_alpha_to_one=False),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return finish(pipe)


def build_sd21(seed: int = 0) -> StableDiffusionPipeline:
    """SD 2.x (768-v): v-prediction UNet with linear projections and per-block heads,
    ``DDIMScheduler`` with SD 2.1's config."""
    with seeded(seed):
        tok = te.build_tokenizer("clip", 77)
        pipe = StableDiffusionPipeline(
            vae=ae.kl(4, 0.18215), text_encoder=te.clip_text(tok, 32), tokenizer=tok,
            unet=_sd_unet(32, linear=True, heads=(2, 4)),
            scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear", clip_sample=False,
                                    set_alpha_to_one=False, steps_offset=1,
                                    prediction_type="v_prediction"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return finish(pipe)


def build_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL: UNet with ``text_time`` added conditions (pooled 32 + 6 time ids x 8), cross
    attention on the concatenated penultimate states of two CLIP towers (32 + 32),
    ``EulerDiscreteScheduler`` with SDXL's config, ``force_zeros_for_empty_prompt=True``."""
    with seeded(seed):
        tok, tok2 = te.build_tokenizer("clip", 77), te.build_tokenizer("clip", 77)
        unet = _sd_unet(64, linear=True, heads=(2, 4), addition_embed_type="text_time",
                        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
                        transformer_layers_per_block=(1, 2))
        pipe = StableDiffusionXLPipeline(
            vae=ae.kl(4, 0.13025), text_encoder=te.clip_text(tok, 32), tokenizer=tok,
            text_encoder_2=te.clip_text(tok2, 32, projection=True), tokenizer_2=tok2, unet=unet,
            scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                             beta_schedule="scaled_linear", steps_offset=1,
                                             timestep_spacing="leading",
                                             interpolation_type="linear"),
            force_zeros_for_empty_prompt=True, add_watermarker=False)
    return finish(pipe)


def _pixart_transformer(sample_size: int, caption: int = 32) -> PixArtTransformer2DModel:
    return PixArtTransformer2DModel(
        sample_size=sample_size, num_layers=2, patch_size=2, attention_head_dim=8,
        num_attention_heads=3, caption_channels=caption, in_channels=4, cross_attention_dim=24,
        out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
        norm_eps=1e-6, use_additional_conditions=sample_size == 128)


def _pixart_scheduler() -> DPMSolverMultistepScheduler:
    """PixArt checkpoints' scheduler: DPM-Solver++(2M), epsilon, linear betas 1e-4..0.02."""
    return DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                       prediction_type="epsilon", solver_order=2,
                                       algorithm_type="dpmsolver++", solver_type="midpoint",
                                       lower_order_final=True, use_karras_sigmas=False)


def build_pixart_alpha(seed: int = 0) -> PixArtAlphaPipeline:
    """PixArt-alpha (1024-MS): ``sample_size=128`` so the resolution / aspect-ratio micro
    conditions are used as in the real checkpoint; T5 encoder (120 tokens by default)."""
    with seeded(seed):
        tok = te.build_tokenizer("t5", 512)
        pipe = PixArtAlphaPipeline(tokenizer=tok, text_encoder=te.t5_encoder(tok, 32),
                                   vae=ae.kl(4, 0.18215), transformer=_pixart_transformer(128),
                                   scheduler=_pixart_scheduler())
    return finish(pipe)


def build_pixart_sigma(seed: int = 0) -> PixArtSigmaPipeline:
    """PixArt-Sigma: learned-variance DiT (8 output channels for 4 latent), T5 (300 tokens),
    SDXL VAE scaling (0.13025)."""
    with seeded(seed):
        tok = te.build_tokenizer("t5", 512)
        pipe = PixArtSigmaPipeline(tokenizer=tok, text_encoder=te.t5_encoder(tok, 32),
                                   vae=ae.kl(4, 0.13025), transformer=_pixart_transformer(8),
                                   scheduler=_pixart_scheduler())
    return finish(pipe)


def build_hunyuandit(seed: int = 0) -> HunyuanDiTPipeline:
    """HunyuanDiT (v1.2-style): BERT (77 tokens) + T5 (256 tokens), learned-variance DiT,
    v-prediction DDPM (ancestral: draws noise from the generator each step). The pipeline
    hard-codes a VAE factor of 8 for its rotary grid, so this VAE has four blocks."""
    with seeded(seed):
        tok, tok2 = te.build_tokenizer("bert", 77), te.build_tokenizer("t5", 256)
        transformer = HunyuanDiT2DModel(
            sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8,
            num_attention_heads=3, in_channels=4, cross_attention_dim=32,
            cross_attention_dim_t5=32, pooled_projection_dim=16, hidden_size=24,
            activation_fn="gelu-approximate", text_len=77, text_len_t5=256,
            use_style_cond_and_image_meta_size=False)
        vae = ae.kl(4, 0.13025, blocks=4)
        pipe = HunyuanDiTPipeline(
            vae=vae, text_encoder=te.bert_encoder(tok, 32), tokenizer=tok, transformer=transformer,
            scheduler=DDPMScheduler(beta_start=0.00085, beta_end=0.018,
                                    beta_schedule="scaled_linear", clip_sample=False,
                                    prediction_type="v_prediction", steps_offset=1,
                                    timestep_spacing="leading"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            text_encoder_2=te.t5_encoder(tok2, 32), tokenizer_2=tok2)
    return finish(pipe)


def build_kandinsky3(seed: int = 0) -> Kandinsky3Pipeline:
    """Kandinsky 3: Kandinsky3UNet (epsilon), T5 encoder (128 tokens, context cut to the
    longest mask), MoVQ decoder, DDPM (ancestral) with the checkpoint's squaredcos schedule."""
    with seeded(seed):
        tok = te.build_tokenizer("t5", 128)
        unet = Kandinsky3UNet(in_channels=4, time_embedding_dim=4, groups=2,
                              attention_head_dim=4, layers_per_block=2, block_out_channels=(16, 32),
                              cross_attention_dim=4, encoder_hid_dim=32)
        pipe = Kandinsky3Pipeline(
            tokenizer=tok, text_encoder=te.t5_encoder(tok, 32), unet=unet, movq=ae.movq(4),
            scheduler=DDPMScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                    beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                    thresholding=False))
    return finish(pipe)


#: ``use_resolution_binning=True`` (default) snaps tiny sizes to >= 256 px bins or raises
#: "Invalid sample size"; binning only resizes before / after sampling.
NO_BINNING = {"use_resolution_binning": False}
#: name -> (builder, resolution in pixels, teacher.call_kwargs)
BUILDERS: dict[str, tuple[Callable[[int], Any], int, dict[str, Any]]] = {
    "sd15": (build_sd15, 16, {}),
    "sd21": (build_sd21, 16, {}),
    "sdxl": (build_sdxl, 16, {}),
    "pixart_alpha": (build_pixart_alpha, 16, NO_BINNING),
    "pixart_sigma": (build_pixart_sigma, 16, NO_BINNING),
    "hunyuandit": (build_hunyuandit, 32, NO_BINNING),
    "kandinsky3": (build_kandinsky3, 16, {}),
}

__all__ = ["BUILDERS", "build_hunyuandit", "build_kandinsky3", "build_pixart_alpha",
           "build_pixart_sigma", "build_sd15", "build_sd21", "build_sdxl", "finish", "seeded"]
