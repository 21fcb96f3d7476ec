"""The family table: what cannot be read from a diffusers pipeline's configs.

Everything else (what the network predicts, the time grid, the shift, ``alphas_cumprod``, the
VAE factors, the prompt encoding) comes from the pipeline's own configs and methods. A
:class:`Family` is keyed by the class name of the pipeline's denoiser (``pipe.transformer`` or
``pipe.unet``) and holds:

* ``call(net, x, t, cond) -> out``: the network's call signature. ``x (B, C, H, W)`` in the
  network's input scaling, ``t (B,)`` its time input, ``cond`` a
  :class:`~fewstep.core.conditioning.PromptEmbeds`; ``out (B, C, H, W)``;
* ``time`` (flow-matching families): the time input as a function of sigma (``sigma``,
  ``sigma_1000``, ``one_minus_sigma``); VP families get the continuous scheduler timestep;
* ``sign``: ``-1`` if the network outputs minus the scheduler's model output (Z-Image);
* ``mask_index`` / ``pooled_index``: positions in ``encode_prompt``'s return tuple of the
  attention mask (trim each prompt to its valid tokens) and of a pooled embedding;
* ``cfg_offset``: the pipeline's ``guidance_scale`` g is our ``w = g + cfg_offset``;
* ``seq_patch``: latent pixels per side of one token for ``image_seq_len`` (dynamic shifting);
* ``blocks``: name of the ``ModuleList`` whose outputs are the discriminator features.

Add a family: write its ``call`` and add one entry to :data:`FAMILIES` (docs/adapters.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

CallFn = Callable[[nn.Module, Tensor, Tensor, Any], Tensor]


@dataclass(frozen=True)
class Family:
    call: CallFn
    time: str = "sigma_1000"
    sign: float = 1.0
    mask_index: int | None = None
    pooled_index: int | None = None
    cfg_offset: float = 0.0
    seq_patch: int = 2
    blocks: str = "transformer_blocks"
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


def _unet_cond_call(net: nn.Module, x: Tensor, t: Tensor, cond: Any) -> Tensor:
    return net(x, t, encoder_hidden_states=cond.embeds, return_dict=False)[0]


def _pixart_call(net: nn.Module, x: Tensor, t: Tensor, cond: Any) -> Tensor:
    out = net(x, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask.long(),
              timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
              return_dict=False)[0]
    if out.shape[1] == 2 * x.shape[1]:  # learned variance: keep the mean prediction
        out = out[:, : x.shape[1]]
    return out


def pack_2x2(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, (H/2)(W/2), 4C)`` (Flux's token layout)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(
        b, (h // 2) * (w // 2), c * 4)


def unpack_2x2(tokens: Tensor, h: int, w: int) -> Tensor:
    """Inverse of :func:`pack_2x2`."""
    b, _, c4 = tokens.shape
    c = c4 // 4
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def _flux_call(net: nn.Module, x: Tensor, t: Tensor, cond: Any) -> Tensor:
    b, _, h, w = x.shape
    ids = torch.zeros(h // 2, w // 2, 3, device=x.device, dtype=x.dtype)
    ids[..., 1] = torch.arange(h // 2, device=x.device, dtype=x.dtype)[:, None]
    ids[..., 2] = torch.arange(w // 2, device=x.device, dtype=x.dtype)[None, :]
    txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=x.device, dtype=x.dtype)
    guidance = None
    if getattr(net.config, "guidance_embeds", False):
        guidance = torch.full((b,), float(getattr(net, "fewstep_guidance", 3.5)),
                              device=x.device, dtype=torch.float32)
    out = net(hidden_states=pack_2x2(x), timestep=t, guidance=guidance,
              pooled_projections=cond.pooled, encoder_hidden_states=cond.embeds,
              txt_ids=txt_ids, img_ids=ids.reshape(-1, 3), return_dict=False)[0]
    return unpack_2x2(out, h, w)


#: denoiser class name -> family (Z-Image is handled by its own ZImageDenoiser)
FAMILIES: dict[str, Family] = {
    "UNet2DConditionModel": Family(_unet_cond_call, blocks="up_blocks"),
    "PixArtTransformer2DModel": Family(_pixart_call, mask_index=1),
    "FluxTransformer2DModel": Family(_flux_call, time="sigma", pooled_index=1, cfg_offset=0.0),
    "ZImageTransformer2DModel": Family(_unet_cond_call, time="one_minus_sigma", sign=-1.0,
                                       cfg_offset=1.0, blocks="layers",
                                       lora_targets=("to_q", "to_k", "to_v", "to_out.0", "w1",
                                                     "w2", "w3")),
}

__all__ = ["FAMILIES", "Family", "pack_2x2", "unpack_2x2"]
