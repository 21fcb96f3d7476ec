"""fewstep's own family entries, registered exactly as a user's ``plugins:`` module would
(:mod:`fewstep.teachers.diffusers.families`), and only for what a recording cannot show:
decoders whose latents are not ``x / scaling_factor + shift_factor`` of a 4-d VAE, an instance
attribute a pipeline does not save, and training defaults (LoRA targets, feature blocks)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fewstep.teachers.diffusers.codec import decode
from fewstep.teachers.diffusers.families import FAMILIES, Family


def flux2_decode(pipe: Any, x: Tensor) -> Tensor:
    """Flux.2: latents are batch-norm standardised 2x2 patches (the pipeline's own helpers)."""
    bn, eps = pipe.vae.bn, pipe.vae.config.batch_norm_eps
    z = pipe._patchify_latents(x)
    z = z * (bn.running_var.view(1, -1, 1, 1) + eps).sqrt() + bn.running_mean.view(1, -1, 1, 1)
    z = pipe._unpatchify_latents(z)
    return pipe.vae.decode(z.to(pipe.vae.dtype), return_dict=False)[0]


def frame_decode(pipe: Any, x: Tensor) -> Tensor:
    """Video VAEs used for images (Qwen-Image): one frame axis in and out."""
    return decode(pipe, x.unsqueeze(2))[:, :, 0]


def movq_decode(pipe: Any, x: Tensor) -> Tensor:
    """Kandinsky 3: a MoVQ decoder (``movq``, no ``vae``), no scaling."""
    return pipe.movq.decode(x.to(pipe.movq.dtype), force_not_quantize=True,
                            return_dict=False)[0]


def native_area(pipe: Any, height: int, width: int) -> dict[str, Any]:
    """HiDream rescales every request to the area of ``default_sample_size * vae_scale_factor``
    squared (an instance attribute, 128, that ``save_pretrained`` does not keep): set it from
    the resolution asked for, so the pipeline samples at that size."""
    return {"default_sample_size": max(height, width) // int(pipe.vae_scale_factor)}


for _name in ("Flux2Pipeline", "Flux2KleinPipeline"):
    FAMILIES.register(_name)(Family(decode=flux2_decode))
FAMILIES.register("QwenImagePipeline")(Family(decode=frame_decode))
FAMILIES.register("Kandinsky3Pipeline")(Family(decode=movq_decode))
FAMILIES.register("HiDreamImagePipeline")(Family(attributes=native_area))
FAMILIES.register("ZImageTransformer2DModel")(Family(
    feature_blocks="layers", lora_targets=("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")))
FAMILIES.register("UNet2DConditionModel")(Family(feature_blocks="up_blocks"))

__all__ = ["flux2_decode", "frame_decode", "movq_decode", "native_area"]
