"""Tiny offline diffusers pipelines (Z-Image, Stable-Diffusion-style UNet, PixArt-Sigma, Flux).

Every builder takes a ``seed`` and returns a pipeline whose weights are drawn from it, with a
word-level tokenizer built in code (:func:`build_tiny_tokenizer`), so tests need no files and no
network. Sizes follow diffusers' own tests (a few hundred thousand parameters each).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.pixart_transformer_2d import PixArtTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.models.transformers.transformer_z_image import ZImageTransformer2DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import PixArtSigmaPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.z_image.pipeline_z_image import ZImagePipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
    FlowMatchEulerDiscreteScheduler,
)
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3Model,
    T5Config,
    T5EncoderModel,
)


def _components(**parts: Any) -> dict[str, Any]:
    """A pipeline's components as keyword arguments: diffusers annotates its tokenizer
    parameters with the slow tokenizer classes and optional components (safety checker,
    feature extractor) as required, while it accepts the fast tokenizers and ``None`` used here."""
    return parts


def init_pad_tokens(module: torch.nn.Module, std: float = 0.02,
                    generator: torch.Generator | None = None) -> None:
    """Give learned pad tokens (``x_pad_token``, ``cap_pad_token``, ...) created with
    ``torch.empty`` finite values (random construction leaves them uninitialised: NaNs in
    padded positions). Checkpoints hold trained values; only tiny random models need this."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("pad_token"):
                p.copy_(torch.randn(p.shape, generator=generator) * std)

#: Z-Image transformer size used by diffusers' own tests (~0.36 M parameters).
TINY_TRANSFORMER_CONFIG: dict[str, Any] = {
    "all_patch_size": (2,), "all_f_patch_size": (1,), "in_channels": 16, "dim": 32,
    "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "norm_eps": 1e-5,
    "qk_norm": True, "cap_feat_dim": 16, "rope_theta": 256.0, "t_scale": 1000.0,
    "axes_dims": [8, 4, 4], "axes_lens": [256, 32, 32],
}

_TINY_WORDS = (
    "user", "assistant", "system", "a", "an", "the", "of", "in", "on", "with", "and", "photo",
    "picture", "painting", "cat", "dog", "bird", "car", "house", "tree", "flower", "red", "green",
    "blue", "yellow", "black", "white", "small", "big", "digit", "zero", "one", "two", "three",
    "four", "five", "six", "seven", "eight", "nine",
)
_TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "[UNK]")
_TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)


def build_tiny_tokenizer(model_max_length: int = 16, append_eos: bool = False
                         ) -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in code (no files), with a Qwen-like chat template;
    ``append_eos`` ends every encoding with ``<|im_end|>`` (like T5's ``</s>``)."""
    vocab = {w: i for i, w in enumerate((*_TINY_SPECIALS, *_TINY_WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if append_eos:
        tok.post_processor = processors.TemplateProcessing(
            single="$A <|im_end|>", special_tokens=[("<|im_end|>", vocab["<|im_end|>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                   pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>", model_max_length=model_max_length)
    fast.add_special_tokens({"additional_special_tokens": [
        AddedToken(s, special=True, normalized=False) for s in _TINY_SPECIALS[1:5]]})
    fast.chat_template = _TINY_CHAT_TEMPLATE
    return fast


def _tiny_vae(latent_channels: int, scaling_factor: float = 0.3611,
              shift_factor: float | None = 0.1159) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64],
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=32,
                         scaling_factor=scaling_factor, shift_factor=shift_factor)


def _tiny_clip(vocab: int, hidden: int = 32) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, projection_dim=hidden)).eval()


def _tiny_t5(vocab: int, d_model: int = 32) -> T5EncoderModel:
    # decoder_start_token_id: a config kwarg transformers accepts but T5Config's signature omits
    extra: dict[str, Any] = {"decoder_start_token_id": 0}
    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=37,
                                   num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                   pad_token_id=0, eos_token_id=2, **extra)).eval()


def build_tiny_zimage_pipeline(seed: int = 0, scheduler_shift: float = 3.0) -> ZImagePipeline:
    """The tiny ``ZImagePipeline`` (transformer :data:`TINY_TRANSFORMER_CONFIG`, 2-layer Qwen3
    text encoder of width 16, VAE with 16 latent channels and factor 2, flow-match scheduler
    with ``shift=scheduler_shift``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(**TINY_TRANSFORMER_CONFIG)
        init_pad_tokens(transformer, generator=gen)
        tokenizer = build_tiny_tokenizer(model_max_length=512)
        text_encoder = Qwen3Model(Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, head_dim=8,
            max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id))
        vae = _tiny_vae(16)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=scheduler_shift)
    pipe = ZImagePipeline(**_components(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer,
        transformer=transformer.eval()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd_pipeline(seed: int = 0, scheduler: Any = None) -> StableDiffusionPipeline:
    """A Stable-Diffusion-style pipeline: ``UNet2DConditionModel`` (32, 64) on 4-channel 8x8
    latents of 16x16 images, a 2-layer CLIP text encoder of width 32 (16 tokens), and by
    default a v-prediction DDIM scheduler with trailing spacing and zero terminal SNR."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=8)
        tokenizer = build_tiny_tokenizer()
        text_encoder = _tiny_clip(len(tokenizer))
        vae = _tiny_vae(4, scaling_factor=0.18215, shift_factor=None)
    if scheduler is None:
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", clip_sample=False,
                                  set_alpha_to_one=True, prediction_type="v_prediction",
                                  timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                  steps_offset=1)
    pipe = StableDiffusionPipeline(**_components(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet.eval(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pixart_pipeline(seed: int = 0, scheduler: Any = None) -> PixArtSigmaPipeline:
    """A PixArt-Sigma pipeline: ``PixArtTransformer2DModel`` (2 layers, learned variance: 8
    output channels for 4 latent channels), a 2-layer T5 encoder of width 32, and by default
    an epsilon DDIM scheduler (linear betas, trailing spacing, ``set_alpha_to_one``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = PixArtTransformer2DModel(
            sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
            num_attention_heads=3, caption_channels=32, in_channels=4, cross_attention_dim=24,
            out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6)
        tokenizer = build_tiny_tokenizer(append_eos=True)
        text_encoder = _tiny_t5(len(tokenizer))
        vae = _tiny_vae(4, scaling_factor=0.13025, shift_factor=None)
    if scheduler is None:
        scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False,
                                  set_alpha_to_one=True, timestep_spacing="trailing")
    pipe = PixArtSigmaPipeline(**_components(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer.eval(),
        scheduler=scheduler))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """A Flux pipeline: ``FluxTransformer2DModel`` (1 double + 1 single block, 16 packed input
    channels = 4 latent channels x 2x2), CLIP (pooled) + T5 text encoders of width 32, VAE with
    4 latent channels, flow-match scheduler with dynamic shifting (Flux's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
            pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=False)
        tokenizer = build_tiny_tokenizer()
        tokenizer_2 = build_tiny_tokenizer(append_eos=True)
        text_encoder = _tiny_clip(len(tokenizer))
        text_encoder_2 = _tiny_t5(len(tokenizer_2))
        vae = _tiny_vae(4)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    pipe = FluxPipeline(**_components(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                      tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                                      tokenizer_2=tokenizer_2, transformer=transformer.eval()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_unet_config(sample_size: int = 8, in_channels: int = 3,
                     num_class_embeds: int | None = None) -> dict[str, Any]:
    """A test-size ``UNet2DModel`` config (block_out_channels (32, 64), one layer per block)."""
    return {
        "sample_size": sample_size, "in_channels": in_channels, "out_channels": in_channels,
        "layers_per_block": 1, "block_out_channels": (32, 64), "norm_num_groups": 8,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "attention_head_dim": 8,
        "num_class_embeds": num_class_embeds,
    }


__all__ = ["TINY_TRANSFORMER_CONFIG", "build_tiny_flux_pipeline", "build_tiny_pixart_pipeline",
           "build_tiny_sd_pipeline", "build_tiny_tokenizer", "build_tiny_zimage_pipeline",
           "init_pad_tokens", "tiny_unet_config"]


#: max_sequence_length of the tiny text encoders in tests.
TINY_MAX_SEQ = 64


def tiny_latents(batch: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Deterministic Z-Image-shaped latents ``(batch, 16, size, size)``."""
    return torch.randn(batch, 16, size, size, generator=torch.Generator().manual_seed(seed))
