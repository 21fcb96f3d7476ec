"""Tiny offline flow-matching pipelines, part 1: Z-Image, Flux.1 (plain and guidance-embedded),
Flux.2 (dev-style ``Flux2Pipeline`` and ``Flux2KleinPipeline``), SD3, AuraFlow, Chroma.

Each ``build_*(seed)`` draws all weights from ``seed``; schedulers carry the real
checkpoints' configs (shift, dynamic shifting). Text encoders are sized so the pipeline's
default call arguments work: Flux.2 reads hidden states (10, 20, 30) / (9, 18, 27), so its
tiny text models have 31 / 28 layers of width 16.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusers import (
    AuraFlowPipeline,
    AuraFlowTransformer2DModel,
    ChromaPipeline,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    ZImagePipeline,
)
from diffusers.models.transformers.transformer_z_image import ZImageTransformer2DModel

from fewstep.testing import tiny_autoencoders as ae
from fewstep.testing import tiny_text_encoders as te
from fewstep.testing.tiny_pipelines import init_pad_tokens
from fewstep.testing.tiny_vp_pipelines import finish, seeded


def build_zimage(seed: int = 0) -> ZImagePipeline:
    """Z-Image (Turbo-shaped): ZImageTransformer2DModel (dim 32, 2 + 1 refiner layers, patch 2),
    2-layer Qwen3 of width 16 (hidden_states[-2] is used), 16-channel VAE with shift, flow-match
    scheduler ``shift=3``."""
    with seeded(seed):
        tok = te.build_tokenizer("qwen", 512)
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2,
            n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
            cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4],
            axes_lens=[1024, 32, 32])
        init_pad_tokens(transformer)
        pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                              vae=ae.kl(16, 0.3611, 0.1159), text_encoder=te.qwen3(tok, 16),
                              tokenizer=tok, transformer=transformer)
    return finish(pipe)


def _flux_scheduler(**kw: Any) -> FlowMatchEulerDiscreteScheduler:
    """Flux.1-dev's scheduler: shift 3 with resolution-dependent (dynamic) shifting."""
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                           max_shift=1.15, base_image_seq_len=256,
                                           max_image_seq_len=4096, **kw)


def build_flux(seed: int = 0, guidance_embeds: bool = False) -> FluxPipeline:
    """Flux.1: 1 double + 1 single block, 16 packed channels (4 latent x 2x2), CLIP (pooled, 77
    tokens) + T5 (512 tokens) of width 32; ``guidance_embeds=True`` is the dev-style model
    whose guidance scale is an input of the transformer."""
    with seeded(seed):
        tok, tok2 = te.build_tokenizer("clip", 77), te.build_tokenizer("t5", 512)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
            pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds)
        pipe = FluxPipeline(scheduler=_flux_scheduler(), vae=ae.kl(4, 0.3611, 0.1159),
                            text_encoder=te.clip_text(tok, 32), tokenizer=tok,
                            text_encoder_2=te.t5_encoder(tok2, 32), tokenizer_2=tok2,
                            transformer=transformer, image_encoder=None, feature_extractor=None)
    return finish(pipe)


def build_flux_dev(seed: int = 0) -> FluxPipeline:
    """Flux.1-dev-style: embedded guidance (``guidance_embeds=True``)."""
    return build_flux(seed, guidance_embeds=True)


def _flux2_transformer(joint_dim: int, guidance_embeds: bool) -> Flux2Transformer2DModel:
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=joint_dim, timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4], guidance_embeds=guidance_embeds)


def build_flux2(seed: int = 0) -> Flux2Pipeline:
    """Flux.2 [dev]-style: Flux2Transformer2DModel with embedded guidance, Mistral3 text model
    (31 layers of width 16, states 10/20/30 stacked -> 48 channels), AutoencoderKLFlux2
    (4 channels, 2x2 patchify + batch-norm statistics). The real checkpoint ships a
    ``PixtralProcessor``; here a tokenizer with the same chat template interface stands in."""
    with seeded(seed):
        tok = te.build_tokenizer("bos", 512)
        pipe = Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(
                                 shift=3.0, use_dynamic_shifting=True),
                             vae=ae.kl_flux2(4), text_encoder=te.mistral3(tok, 16, layers=31),
                             tokenizer=tok, transformer=_flux2_transformer(48, True))
    return finish(pipe)


def build_flux2_klein(seed: int = 0) -> Flux2KleinPipeline:
    """Flux.2 [klein] base-style: no guidance embedding, true CFG against ``""``
    (``is_distilled=False``), Qwen3 causal LM (28 layers of width 16, states 9/18/27)."""
    with seeded(seed):
        tok = te.build_tokenizer("qwen", 512)
        pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(
                                      shift=3.0, use_dynamic_shifting=True),
                                  vae=ae.kl_flux2(4),
                                  text_encoder=te.qwen3(tok, 16, layers=28, causal_lm=True),
                                  tokenizer=tok, transformer=_flux2_transformer(48, False),
                                  is_distilled=False)
    return finish(pipe)


def build_sd3(seed: int = 0) -> StableDiffusion3Pipeline:
    """SD3 / 3.5: MMDiT (patch 2, 1 layer), two CLIP-with-projection towers (16 + 16, pooled
    32), T5 of width 48 (CLIP states zero-padded to 48 and concatenated before T5's), 16-channel
    VAE with shift, flow-match ``shift=3``."""
    with seeded(seed):
        tok, tok2, tok3 = (te.build_tokenizer("clip", 77), te.build_tokenizer("clip", 77),
                           te.build_tokenizer("t5", 256))
        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8,
            num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=48,
            pooled_projection_dim=32, out_channels=16, pos_embed_max_size=32, qk_norm="rms_norm")
        pipe = StableDiffusion3Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=ae.kl(16, 1.5305, 0.0609),
            text_encoder=te.clip_text(tok, 16, projection=True), tokenizer=tok,
            text_encoder_2=te.clip_text(tok2, 16, projection=True), tokenizer_2=tok2,
            text_encoder_3=te.t5_encoder(tok3, 48), tokenizer_3=tok3, transformer=transformer,
            image_encoder=None, feature_extractor=None)
    return finish(pipe)


def build_auraflow(seed: int = 0) -> AuraFlowPipeline:
    """AuraFlow: 1 MMDiT + 1 single DiT layer (patch 2), UMT5 encoder (256 tokens), 4-channel
    SDXL-style VAE (0.13025), flow-match scheduler (shift 1.73 as AuraFlow 0.3 ships)."""
    with seeded(seed):
        tok = te.build_tokenizer("t5", 256)
        transformer = AuraFlowTransformer2DModel(
            sample_size=32, patch_size=2, in_channels=4, num_mmdit_layers=1,
            num_single_dit_layers=1, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=32, out_channels=4,
            pos_embed_max_size=256)
        pipe = AuraFlowPipeline(tokenizer=tok, text_encoder=te.t5_encoder(tok, 32, umt5=True),
                                vae=ae.kl(4, 0.13025), transformer=transformer,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=1.73))
    return finish(pipe)


def build_chroma(seed: int = 0) -> ChromaPipeline:
    """Chroma: Flux-like transformer without pooled / guidance inputs (modulations from a
    small approximator), T5 only (512 tokens, attention-masked), true CFG with a negative."""
    with seeded(seed):
        tok = te.build_tokenizer("t5", 512)
        transformer = ChromaTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
            axes_dims_rope=[4, 4, 8], approximator_hidden_dim=32, approximator_layers=1,
            approximator_num_channels=16)
        pipe = ChromaPipeline(scheduler=_flux_scheduler(), vae=ae.kl(4, 0.3611, 0.1159),
                              text_encoder=te.t5_encoder(tok, 32), tokenizer=tok,
                              transformer=transformer, image_encoder=None, feature_extractor=None)
    return finish(pipe)


#: name -> (builder, resolution in pixels, teacher.call_kwargs)
BUILDERS: dict[str, tuple[Callable[[int], Any], int, dict[str, Any]]] = {
    "zimage": (build_zimage, 16, {}),
    "flux": (build_flux, 16, {}),
    "flux_dev": (build_flux_dev, 16, {}),
    "flux2": (build_flux2, 16, {}),
    "flux2_klein": (build_flux2_klein, 16, {}),
    "sd3": (build_sd3, 16, {}),
    "auraflow": (build_auraflow, 16, {}),
    "chroma": (build_chroma, 16, {}),
}

__all__ = ["BUILDERS", "build_auraflow", "build_chroma", "build_flux", "build_flux2",
           "build_flux2_klein", "build_flux_dev", "build_sd3", "build_zimage"]
