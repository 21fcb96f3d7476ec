"""Tiny networks of every family with a ComfyUI LoRA format, trained-like per-step LoRAs on
them, and the merged weights fewstep computes (the reference the loaders are compared with)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fewstep.student.lora import PerStepLoRA

RANK, ALPHA = 4, 6.0  # scale 1.5: neither 1 nor a power of two
ATT = ["to_q", "to_k", "to_v", "to_out.0"]
JOINT = [*ATT, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def tiny_sdxl_unet() -> nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=32).eval()


def tiny_sd3() -> nn.Module:
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=2,
                                 attention_head_dim=8, num_attention_heads=4,
                                 caption_projection_dim=32, joint_attention_dim=32,
                                 pooled_projection_dim=64, out_channels=4,
                                 dual_attention_layers=(0,), qk_norm="rms_norm").eval()


def tiny_qwen() -> nn.Module:
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    return QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4,
                                       num_layers=2, attention_head_dim=16,
                                       num_attention_heads=3, joint_attention_dim=16,
                                       guidance_embeds=False, axes_dims_rope=(8, 4, 4)).eval()


def _tiny(builder: str, part: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import fewstep.testing.tiny_pipelines as tp

        return getattr(getattr(tp, builder)(0), part)
    return build


#: case -> (network builder, LoRA targets, diffusers pipeline class whose loader reads it)
NETWORKS: dict[str, tuple[Callable[[], nn.Module], list[str], str]] = {
    "sd15": (_tiny("build_tiny_sd_pipeline", "unet"), ATT, "StableDiffusionPipeline"),
    "sdxl": (tiny_sdxl_unet, ATT, "StableDiffusionXLPipeline"),
    "flux": (_tiny("build_tiny_flux_pipeline", "transformer"), ATT, "FluxPipeline"),
    "flux_double_all": (_tiny("build_tiny_flux_pipeline", "transformer"),
                        ["re:transformer_blocks\\..*"], "FluxPipeline"),
    "zimage": (_tiny("build_tiny_zimage_pipeline", "transformer"), [*ATT, "w1", "w2", "w3"],
               "ZImagePipeline"),
    "qwenimage": (tiny_qwen, JOINT, "QwenImagePipeline"),
    "sd3": (tiny_sd3, JOINT, "StableDiffusion3Pipeline"),
    "pixart": (_tiny("build_tiny_pixart_pipeline", "transformer"), ATT, "PixArtSigmaPipeline"),
}


def trained_lora(net: nn.Module, targets: list[str], steps: int = 2) -> PerStepLoRA:
    """A ``steps``-step :class:`PerStepLoRA` on ``net`` with random non-zero A and B."""
    lora = PerStepLoRA(net, steps, rank=RANK, alpha=ALPHA, target_modules=targets)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k in range(steps):
            for p in lora.step_parameters(k):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return lora


def fewstep_merged(lora: PerStepLoRA, k: int) -> dict[str, torch.Tensor]:
    """fewstep's merged float32 weight of every LoRA layer of step ``k``
    (``W + (alpha / r) B A``, as :class:`~fewstep.student.lora_layer.StepLoRALinear` merges)."""
    out = {}
    for name, layer in lora.lora_layers():
        s = f"step{k}"
        out[name] = torch.addmm(layer.base_layer.weight, layer.lora_B[s].weight,
                                layer.lora_A[s].weight, alpha=layer.scaling).detach()
    return out
