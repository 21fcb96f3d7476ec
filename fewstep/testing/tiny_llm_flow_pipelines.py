"""Tiny offline flow-matching pipelines, part 2 (LLM text encoders): Lumina2 (Gemma2 + system
prompt), CogView4 (GLM), Qwen-Image (Qwen2.5-VL + chat template, 3D-conv VAE with
latents_mean/std), HiDream (2 CLIP + T5 + Llama, MoE DiT), Sana (Gemma2 + complex human
instruction, AutoencoderDC, flow DPM-Solver as its checkpoints ship).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusers import (
    CogView4Pipeline,
    CogView4Transformer2DModel,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
    Lumina2Pipeline,
    Lumina2Transformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
)

from fewstep.testing import tiny_autoencoders as ae
from fewstep.testing import tiny_text_encoders as te
from fewstep.testing.tiny_vp_pipelines import finish, seeded


def build_lumina2(seed: int = 0) -> Lumina2Pipeline:
    """Lumina-Image-2.0: Lumina2Transformer2DModel (hidden 32, 2 + 1 refiner layers), Gemma2
    of width 16 (system prompt prepended, 256 tokens), 16-channel VAE with shift and four
    blocks (the pipeline hard-codes ``vae_scale_factor = 8``)."""
    with seeded(seed):
        tok = te.build_tokenizer("bos", 2048)
        transformer = Lumina2Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, hidden_size=32, num_layers=2,
            num_refiner_layers=1, num_attention_heads=2, num_kv_heads=2, multiple_of=16,
            norm_eps=1e-5, axes_dim_rope=(8, 4, 4), axes_lens=(512, 64, 64), cap_feat_dim=16)
        pipe = Lumina2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                               vae=ae.kl(16, 0.3611, 0.1159, blocks=4),
                               text_encoder=te.gemma2(tok, 16),
                               tokenizer=tok)
    return finish(pipe)


def build_cogview4(seed: int = 0) -> CogView4Pipeline:
    """CogView4: CogView4Transformer2DModel (2 layers), GLM text model of width 32 (second-to-
    last hidden state, left-padded to a multiple of 16), 16-channel VAE (scale 1, shift 0),
    flow-match with linear dynamic shifting as scripts/convert_cogview4_to_diffusers.py sets."""
    with seeded(seed):
        tok = te.build_tokenizer("glm", 1024, padding_side="left")
        transformer = CogView4Transformer2DModel(
            patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
            out_channels=16, text_embed_dim=32, time_embed_dim=8, condition_dim=4, sample_size=8,
            rope_axes_dim=(256, 256))
        sched = FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75,
                                                base_image_seq_len=256, use_dynamic_shifting=True,
                                                time_shift_type="linear")
        pipe = CogView4Pipeline(tokenizer=tok, text_encoder=te.glm(tok, 32),
                                vae=ae.kl(16, 1.0, 0.0), transformer=transformer, scheduler=sched)
    return finish(pipe)


def build_qwenimage(seed: int = 0) -> QwenImagePipeline:
    """Qwen-Image: QwenImageTransformer2DModel (2 layers, 2x2 packing of 4 channels), Qwen2.5-VL
    of width 16 (template prefix of 34 tokens dropped), AutoencoderKLQwenImage (factor 4,
    latents_mean / latents_std), flow-match with exponential dynamic shift and
    ``shift_terminal=0.02`` (Qwen-Image's scheduler config, recalled, not read offline)."""
    with seeded(seed):
        tok = te.build_tokenizer("qwen", 1024)
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False,
            axes_dims_rope=(8, 4, 4))
        sched = FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9,
            shift=1.0, shift_terminal=0.02, time_shift_type="exponential",
            use_dynamic_shifting=True)
        pipe = QwenImagePipeline(scheduler=sched, vae=ae.kl_qwenimage(4),
                                 text_encoder=te.qwen25_vl(tok, 16), tokenizer=tok,
                                 transformer=transformer)
    return finish(pipe)


def build_hidream(seed: int = 0) -> HiDreamImagePipeline:
    """HiDream-I1: MoE DiT (1 double + 1 single block, 4 experts / 2 active), two CLIP-with-
    projection towers (248 positions: the pipeline pads CLIP to min(128, 218) tokens; pooled
    32 + 32), T5 of width 32, Llama (2 layers of width 16, every
    hidden state stacked), 16-channel VAE with shift, flow-match ``shift=3``."""
    with seeded(seed):
        toks = [te.build_tokenizer("clip", 248), te.build_tokenizer("clip", 248),
                te.build_tokenizer("t5", 128), te.build_tokenizer("bos", 128)]
        transformer = HiDreamImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1,
            attention_head_dim=8, num_attention_heads=4, caption_channels=[32, 16],
            text_emb_dim=64, num_routed_experts=4, num_activated_experts=2,
            axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1))
        pipe = HiDreamImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=ae.kl(16, 0.3611, 0.1159),
            text_encoder=te.clip_text(toks[0], 32, projection=True), tokenizer=toks[0],
            text_encoder_2=te.clip_text(toks[1], 32, projection=True), tokenizer_2=toks[1],
            text_encoder_3=te.t5_encoder(toks[2], 32), tokenizer_3=toks[2],
            text_encoder_4=te.llama_lm(toks[3], 16, layers=2), tokenizer_4=toks[3],
            transformer=transformer)
    return finish(pipe)


def sana_flow_dpm(flow_shift: float = 3.0) -> DPMSolverMultistepScheduler:
    """The scheduler Sana checkpoints ship: DPM-Solver++ on flow sigmas predicting velocity
    (``flow_shift`` 3 below 4K, 6 at 4K: scripts/convert_sana_to_diffusers.py)."""
    return DPMSolverMultistepScheduler(flow_shift=flow_shift, use_flow_sigmas=True,
                                       prediction_type="flow_prediction")


def build_sana(seed: int = 0) -> SanaPipeline:
    """Sana: linear-attention DiT (1 layer), Gemma2 of width 8 (complex human instruction on
    the positive prompt only, 300 tokens), AutoencoderDC (scale 0.41407), flow DPM-Solver."""
    with seeded(seed):
        tok = te.build_tokenizer("bos", 4096)
        transformer = SanaTransformer2DModel(
            patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2,
            attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
            cross_attention_dim=8, caption_channels=8, sample_size=8)
        pipe = SanaPipeline(tokenizer=tok, text_encoder=te.gemma2(tok, 8), vae=ae.dc(4),
                            transformer=transformer, scheduler=sana_flow_dpm())
    return finish(pipe)


#: name -> (builder, tiny call kwargs beyond prompt / generator / latents, instance attributes
#: to set after building or loading). HiDream rescales every request to the area of
#: ``(default_sample_size * vae_scale_factor)**2`` (an __init__ attribute, 128, not saved).
BUILDERS: dict[str, tuple[Callable[[int], Any], int, dict[str, Any]]] = {
    "lumina2": (build_lumina2, 32, {}),
    "cogview4": (build_cogview4, 32, {}),
    "qwenimage": (build_qwenimage, 16, {}),
    "hidream": (build_hidream, 16, {}),
    "sana": (build_sana, 32, {"use_resolution_binning": False}),
}

__all__ = ["BUILDERS", "build_cogview4", "build_hidream", "build_lumina2", "build_qwenimage",
           "build_sana", "sana_flow_dpm"]

