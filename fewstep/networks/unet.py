"""A diffusers ``UNet2DModel`` as a flow-matching network for images above 8x8.

``UNet(x, t, labels)``: ``x`` is ``(B, C, H, W)``, ``t`` is ``(B,)`` (the noise level
``sigma`` in [0, 1] for our teachers; it is scaled by ``time_scale`` = 1000 before the UNet's
sinusoidal timestep embedding), ``labels`` is ``(B,)`` long with ``num_classes`` as the null
class, or ``None`` (all-null for a class-conditional net). Output has the shape of ``x`` (what
it means, e.g. velocity ``eps - x0``, is the denoiser's ``prediction``).

The UNet is built from plain config values (no weights are downloaded): ``channels`` per
resolution level (each level but the last halves the resolution), ``layers_per_block`` resnets
per level, self-attention in the lowest-resolution level when ``attention`` is set. The output
convolution starts at zero (the initial prediction is 0), as for :class:`ResMLP`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

# from its defining module: mypy resolves ``from diffusers import UNet2DModel`` to diffusers'
# dummy placeholder class (its ``__init__`` star-imports the dummies first)
from diffusers.models.unets.unet_2d import UNet2DModel
from torch import Tensor, nn

from fewstep.networks.registry import NETWORKS


def unet_block_features(unet: nn.Module, forward: Callable[[], Any], dtype: torch.dtype
                        ) -> list[Tensor]:
    """Run ``forward()`` (a forward pass through ``unet``) and return the outputs of ``unet``'s
    mid block and of each up block, in that order, as tokens ``[(B, h * w, C_l), ...]`` (channel
    last, so discriminator heads pool over positions) cast to ``dtype``. Forward hooks capture
    the outputs and are removed afterwards; gradients flow to the inputs of ``forward``.
    ``unet``: a diffusers ``UNet2DModel`` (any module with ``mid_block`` and ``up_blocks``)."""
    up_blocks = unet.get_submodule("up_blocks")
    if not isinstance(up_blocks, nn.ModuleList):
        raise TypeError(f"unet.up_blocks is a {type(up_blocks).__name__}, not an nn.ModuleList")
    blocks = [unet.get_submodule("mid_block"), *up_blocks]
    captured: dict[int, Tensor] = {}
    handles = []
    for i, blk in enumerate(blocks):
        def hook(_m: nn.Module, _inp: Any, out: Any, i: int = i) -> None:
            captured[i] = out[0] if isinstance(out, tuple) else out
        handles.append(blk.register_forward_hook(hook))
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return [captured[i].flatten(2).transpose(1, 2).to(dtype) for i in range(len(blocks))]


@NETWORKS.register("unet")
class UNet(nn.Module):
    """Class-conditional ``UNet2DModel`` wrapper; see module docstring for the call convention.

    Args:
        data_shape: ``(C, H, W)``; ``H`` and ``W`` must be divisible by ``2 ** (levels - 1)``.
        num_classes: classes (0 = unconditional); the embedding has ``num_classes + 1`` rows.
        channels: output channels per level, e.g. ``(32, 64)``.
        layers_per_block: resnet blocks per level.
        attention: self-attention in the last (lowest-resolution) level.
        norm_groups: group-norm groups (must divide every entry of ``channels``).
        time_scale: ``t`` is multiplied by this before the timestep embedding.
    """

    #: default per-step LoRA targets (module-name suffixes): time projections and attention
    lora_targets = ("time_emb_proj", "linear_1", "linear_2", "to_q", "to_k", "to_v", "to_out.0")

    def __init__(self, data_shape: Sequence[int], num_classes: int = 0,
                 channels: Sequence[int] = (32, 64), layers_per_block: int = 1,
                 attention: bool = False, norm_groups: int = 8, time_scale: float = 1000.0
                 ) -> None:
        super().__init__()
        c, h, w = (int(v) for v in data_shape)
        levels = len(channels)
        f = 2 ** (levels - 1)
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} is not divisible by {f} ({levels} UNet levels)")
        if any(ch % norm_groups for ch in channels):
            raise ValueError(f"norm_groups {norm_groups} must divide every channel count "
                             f"{list(channels)}")
        self.data_shape = (c, h, w)
        self.num_classes = num_classes
        self.time_scale = time_scale
        down = ["DownBlock2D"] * levels
        up = ["UpBlock2D"] * levels
        if attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.unet = UNet2DModel(
            sample_size=h if h == w else (h, w), in_channels=c, out_channels=c,
            block_out_channels=tuple(int(v) for v in channels),
            down_block_types=tuple(down), up_block_types=tuple(up),
            layers_per_block=layers_per_block, norm_num_groups=norm_groups,
            attention_head_dim=8, num_class_embeds=num_classes + 1 if num_classes else None)
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)

    def _labels(self, t: Tensor, labels: Tensor | None) -> Tensor | None:
        if self.num_classes == 0:
            return None
        if labels is None:
            return torch.full((t.shape[0],), self.num_classes, device=t.device, dtype=torch.long)
        return labels

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        dtype = self.unet.conv_in.weight.dtype
        out = self.unet(x.to(dtype), t.float() * self.time_scale,
                        class_labels=self._labels(t, labels), return_dict=False)[0]
        return out.to(x.dtype)

    def features(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> list[Tensor]:
        """Outputs of the mid block and each up block as tokens ``[(B, h * w, C_l), ...]``
        (channel last, so discriminator heads pool over positions); gradients flow to ``x``."""
        return unet_block_features(self.unet, lambda: self(x, t, labels), x.dtype)

    def set_gradient_checkpointing(self, enabled: bool = True, checkpoint_fn: Any = None) -> None:
        """Block-level gradient checkpointing of the UNet (``checkpoint_fn``: see
        :meth:`fewstep.student.lora.PerStepLoRA.checkpoint_fn`; ``None``: diffusers' default)."""
        if enabled:
            self.unet.enable_gradient_checkpointing(checkpoint_fn)
        else:
            self.unet.disable_gradient_checkpointing()
