"""One student step's LoRA in the key formats ComfyUI and kohya-style tools read.

Input: a step's adapter in fewstep's peft layout relative to the diffusers network
(``<module>.lora_A.weight (r, in)``, ``<module>.lora_B.weight (out, r)``, what
:meth:`~fewstep.student.lora.PerStepLoRA.adapter_state_dict` gives without the denoiser's
prefix) and its ``alpha``. Output: ``{key: tensor}`` whose weight change is, for every module,
exactly fewstep's ``dW = (alpha / r) B A``. Key formats (:data:`KeyFormat`):

* ``kohya``: ``lora_unet_<module, "." -> "_">.lora_down.weight / .lora_up.weight / .alpha``
  (sd-scripts' format). UNets use the diffusers module path; Flux uses Black Forest Labs'
  native names (``double_blocks_<i>_img_attn_qkv``, ``single_blocks_<i>_linear1`` ...) with
  q / k / v (and the single blocks' ``proj_mlp``) fused into one block-diagonal LoRA of rank
  ``sum r`` and alpha ``alpha * sum r / r``, so the scale stays ``alpha / r``;
* ``diffusion_model``: ``diffusion_model.<module>.lora_A.weight / .lora_B.weight / .alpha``;
* ``transformer``: ``transformer.<module>.lora_A.weight / .lora_B.weight`` with ``alpha / r``
  multiplied into B and no alpha key (diffusers' own format; for loaders that take no alpha).

Which format each network gets (:data:`COMFY_FORMATS`, first = default) is what both ComfyUI's
LoRA loader and diffusers' converters for non-diffusers LoRAs read (docs/export.md records the
checks): SD 1.x / SDXL UNets ``kohya``; Flux ``kohya`` (or ``transformer``); Z-Image and
Qwen-Image ``diffusion_model`` (Z-Image also ``transformer``, Qwen-Image also ``kohya``); SD3
and PixArt ``transformer``. ComfyUI has no Sana model, so Sana students export in the
diffusers format only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

KeyFormat = Literal["kohya", "diffusion_model", "transformer"]
Adapter = dict[str, Tensor]

#: diffusers denoiser class -> the key formats written for it (the first is the default)
COMFY_FORMATS: dict[str, tuple[KeyFormat, ...]] = {
    "UNet2DConditionModel": ("kohya",),
    "FluxTransformer2DModel": ("kohya", "transformer"),
    "ZImageTransformer2DModel": ("diffusion_model", "transformer"),
    "QwenImageTransformer2DModel": ("diffusion_model", "kohya"),
    "SD3Transformer2DModel": ("transformer",),
    "PixArtTransformer2DModel": ("transformer",),
}


def key_format_for(net_class: str, key_format: str | None = None) -> KeyFormat:
    """The key format of a network class (``key_format`` checked, or the default);
    ``ValueError`` naming the class or the formats it has."""
    if net_class not in COMFY_FORMATS:
        raise ValueError(f"no ComfyUI LoRA format for {net_class} (ComfyUI / kohya formats "
                         f"exist for {', '.join(sorted(COMFY_FORMATS))}); use the diffusers "
                         "export")
    formats = COMFY_FORMATS[net_class]
    if key_format is None:
        return formats[0]
    if key_format not in formats:
        raise ValueError(f"key format {key_format!r} is not read for {net_class} (use "
                         f"{' or '.join(formats)})")
    return key_format


def split_adapter(adapter: Adapter) -> dict[str, tuple[Tensor, Tensor]]:
    """``{module: (A (r, in), B (out, r))}`` of peft keys; ``ValueError`` on a lone half."""
    parts: dict[str, dict[str, Tensor]] = {}
    for key, t in adapter.items():
        m = re.fullmatch(r"(.+)\.lora_([AB])\.weight", key)
        if m is None:
            raise ValueError(f"not a peft LoRA key: {key!r}")
        parts.setdefault(m.group(1), {})[m.group(2)] = t
    out = {}
    for name, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{name}: lora_A and lora_B must both be present")
        if ab["A"].shape[0] != ab["B"].shape[1]:
            raise ValueError(f"{name}: rank of A {tuple(ab['A'].shape)} and B "
                             f"{tuple(ab['B'].shape)} differ")
        out[name] = (ab["A"], ab["B"])
    return out


def _alpha(value: float) -> Tensor:
    return torch.tensor(float(value), dtype=torch.float32)


def _kohya(name: str, a: Tensor, b: Tensor, alpha: float) -> Adapter:
    return {f"{name}.lora_down.weight": a.contiguous(), f"{name}.lora_up.weight": b.contiguous(),
            f"{name}.alpha": _alpha(alpha)}


def fuse(parts: Sequence[tuple[Tensor, Tensor] | None], out_dims: Sequence[int]
         ) -> tuple[Tensor, Tensor]:
    """One LoRA on a fused layer (its outputs = the parts' outputs stacked) from LoRAs on the
    parts: ``down = cat(A_i)`` ``(sum r_i, in)``, ``up`` block-diagonal ``(sum out_dims,
    sum r_i)`` (rows of a part without LoRA stay zero), so ``up @ down`` stacks ``B_i A_i``."""
    present = [p for p in parts if p is not None]
    if not present:
        raise ValueError("fuse: no part has a LoRA")
    ranks = [0 if p is None else p[0].shape[0] for p in parts]
    b0 = present[0][1]
    up = torch.zeros(sum(out_dims), sum(ranks), dtype=b0.dtype, device=b0.device)
    row = col = 0
    for p, d, r in zip(parts, out_dims, ranks, strict=True):
        if p is not None:
            if p[1].shape[0] != d:
                raise ValueError(f"fuse: a part has {p[1].shape[0]} outputs, expected {d}")
            up[row:row + d, col:col + r] = p[1]
        row, col = row + d, col + r
    return torch.cat([p[0] for p in present], 0), up


# Flux: diffusers module (inside a block) -> Black Forest Labs' name (sd-scripts, ComfyUI)
_FLUX_DOUBLE = {"attn.to_out.0": "img_attn_proj", "attn.to_add_out": "txt_attn_proj",
                "ff.net.0.proj": "img_mlp_0", "ff.net.2": "img_mlp_2",
                "ff_context.net.0.proj": "txt_mlp_0", "ff_context.net.2": "txt_mlp_2",
                "norm1.linear": "img_mod_lin", "norm1_context.linear": "txt_mod_lin"}
_FLUX_DOUBLE_FUSED = {"img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                      "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_FLUX_SINGLE = {"proj_out": "linear2", "norm.linear": "modulation_lin"}
_FLUX_SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def flux_kohya(mods: dict[str, tuple[Tensor, Tensor]], alpha: float, hidden: int,
               mlp_hidden: int) -> Adapter:
    """Flux in sd-scripts' names (module docstring); ``hidden``: the model width,
    ``mlp_hidden``: the output width of a single block's ``proj_mlp``."""
    out: Adapter = {}
    done: set[str] = set()
    rank = next(iter(mods.values()))[0].shape[0]
    blocks: dict[tuple[str, int], None] = {}
    for name in mods:
        m = re.match(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.", name)
        if m is None:
            raise ValueError(f"Flux: no kohya name for the LoRA on {name!r} (only the "
                             "transformer blocks have one)")
        blocks[(m.group(1), int(m.group(2)))] = None
    for kind, i in blocks:
        pre = f"{kind}.{i}."
        if kind == "transformer_blocks":
            simple, tag = _FLUX_DOUBLE, f"lora_unet_double_blocks_{i}_"
            fused: dict[str, tuple[tuple[str, ...], list[int]]] = {
                k: (v, [hidden] * 3) for k, v in _FLUX_DOUBLE_FUSED.items()}
        else:
            simple, tag = _FLUX_SINGLE, f"lora_unet_single_blocks_{i}_"
            fused = {"linear1": (_FLUX_SINGLE_FUSED, [hidden] * 3 + [mlp_hidden])}
        for sub, bfl in simple.items():
            if pre + sub in mods:
                out.update(_kohya(tag + bfl, *mods[pre + sub], alpha))
                done.add(pre + sub)
        for bfl, (subs, dims) in fused.items():
            parts = [mods.get(pre + s) for s in subs]
            if any(p is not None for p in parts):
                down, up = fuse(parts, dims)
                out.update(_kohya(tag + bfl, down, up, alpha * down.shape[0] / rank))
                done.update(pre + s for s in subs if pre + s in mods)
    left = sorted(set(mods) - done)
    if left:
        raise ValueError(f"Flux: no kohya name for the LoRA on {left[0]!r}")
    return out


def comfy_lora_tensors(net_class: str, adapter: Adapter, alpha: float,
                       key_format: str | None = None,
                       flux_widths: tuple[int, int] | None = None) -> Adapter:
    """One step's ``adapter`` (peft keys, module docstring) in ``key_format`` (default: the
    network's, :data:`COMFY_FORMATS`). ``flux_widths = (hidden, mlp_hidden)`` is needed for
    Flux's ``kohya`` format (:func:`flux_widths_of`)."""
    fmt = key_format_for(net_class, key_format)
    mods = split_adapter(adapter)
    if not mods:
        raise ValueError("the adapter holds no LoRA weights")
    if net_class == "FluxTransformer2DModel" and fmt == "kohya":
        if flux_widths is None:
            raise ValueError("Flux's kohya format needs flux_widths=(hidden, mlp_hidden)")
        return flux_kohya(mods, alpha, *flux_widths)
    out: Adapter = {}
    for name, (a, b) in mods.items():
        if fmt == "kohya":
            out.update(_kohya("lora_unet_" + name.replace(".", "_"), a, b, alpha))
        elif fmt == "diffusion_model":
            out.update({f"diffusion_model.{name}.lora_A.weight": a.contiguous(),
                        f"diffusion_model.{name}.lora_B.weight": b.contiguous(),
                        f"diffusion_model.{name}.alpha": _alpha(alpha)})
        else:
            scale = alpha / a.shape[0]
            out.update({f"transformer.{name}.lora_A.weight": a.contiguous(),
                        f"transformer.{name}.lora_B.weight": (b * scale).contiguous()})
    return out


def flux_widths_of(net: torch.nn.Module) -> tuple[int, int]:
    """``(hidden, mlp_hidden)`` of a ``FluxTransformer2DModel`` (from its config)."""
    cfg: Any = net.config  # diffusers' FrozenDict config (nn.Module.__getattr__ types it a Tensor)
    hidden = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
    blocks = getattr(net, "single_transformer_blocks", None)
    mlp = int(blocks[0].proj_mlp.out_features) if blocks else 4 * hidden
    return hidden, mlp


def lora_delta(adapter: Adapter, alpha: float) -> dict[str, Tensor]:
    """``{module: (alpha / r) B A}`` (float64) of a peft adapter: what every format keeps."""
    return {n: (alpha / a.shape[0]) * (b.double() @ a.double())
            for n, (a, b) in split_adapter(adapter).items()}


__all__ = ["COMFY_FORMATS", "KeyFormat", "comfy_lora_tensors", "flux_kohya", "flux_widths_of",
           "fuse", "key_format_for", "lora_delta", "split_adapter"]
