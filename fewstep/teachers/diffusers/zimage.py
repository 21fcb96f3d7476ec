"""Z-Image (``diffusers.ZImageTransformer2DModel``) as a fewstep :class:`~fewstep.Denoiser`.

Native interface of the transformer (diffusers 0.42, ``ZImagePipeline.__call__``):

* ``x``: a *list* of latents, each ``(C, 1, H, W)`` (a frame axis of length 1 is inserted);
* ``t``: ``(B,)`` float, ``t = 1 - sigma`` (the pipeline passes ``(1000 - timestep) / 1000``
  where ``timestep = 1000 sigma``); 1 is clean data, 0 is pure noise;
* ``cap_feats``: a *list* of caption features, each ``(L_i, cap_feat_dim)`` with its own length
  (the pipeline keeps only the unmasked tokens of the text encoder's second-to-last layer);
* output: a list of ``(C, 1, H, W)`` tensors equal to **minus** the velocity, ``-v = x0 - eps``.

So with our convention (``sigma`` in [0, 1], 1 = noise, ``x_sigma = (1 - sigma) x0 + sigma eps``)
``x0_hat = x_sigma - sigma v = x_sigma + sigma * out``. The pipeline's CFG is
``pos + g (pos - neg)``; in our convention ``w = 1 + g`` (:mod:`fewstep.core.guidance`).

Conditioning is a :class:`PromptEmbeds`: a right-padded tensor ``(B, L, D)`` plus a boolean mask
``(B, L)``; the valid tokens of row ``i`` are ``embeds[i, mask[i]]``. Padding is stripped before
the transformer, which does its own padding (to a multiple of 32, with its learned pad token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fewstep.core.conditioning import PromptEmbeds
from fewstep.core.denoiser import Denoiser
from fewstep.core.guidance import cfg_combine, w_from_zimage_scale
from fewstep.core.path import expand_like

#: Names (suffixes) of the attention and MLP projections of a Z-Image block, for LoRA.
ZIMAGE_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")

# --------------------------------------------------------------------------------------------
# Denoiser
# --------------------------------------------------------------------------------------------
class ZImageDenoiser(Denoiser):
    """``x0_hat = D(x_sigma, sigma, cond)`` around a ``ZImageTransformer2DModel``.

    Args:
        transformer: the diffusers model (any dtype/device; inputs are cast to its dtype and the
            output back to ``x``'s dtype).
        null_embeds: ``(L0, D)`` caption features of the empty prompt, used by :meth:`null_cond`
            for CFG (a non-persistent buffer: it follows ``.to()`` but is not in the state dict).
        feature_layers: indices into ``transformer.layers`` whose outputs :meth:`features`
            returns (default: all main layers).

    Shapes: ``x`` is ``(B, C, H, W)`` latents (``H, W`` divisible by the patch size), ``sigma``
    is ``(B,)`` or a scalar, ``cond`` a :class:`PromptEmbeds` with ``B`` rows (or one row, which
    is broadcast).
    """

    #: default LoRA target patterns (read by ``fewstep.student.student.resolve_lora_targets``)
    lora_targets: tuple[str, ...] = ZIMAGE_LORA_TARGETS

    def __init__(self, transformer: nn.Module, null_embeds: Tensor | None = None,
                 feature_layers: Sequence[int] | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.register_buffer("null_embeds", None if null_embeds is None else null_embeds.detach(),
                             persistent=False)
        self.feature_layers = (list(range(len(transformer.layers))) if feature_layers is None
                               else list(feature_layers))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ZImageDenoiser:
        """Randomly initialised transformer from a config dict (pad tokens initialised)."""
        from diffusers import ZImageTransformer2DModel

        transformer = ZImageTransformer2DModel.from_config(dict(config))
        init_pad_tokens(transformer)
        return cls(transformer)

    @classmethod
    def from_pipeline(cls, pipe: Any, null_embeds: Tensor | None = None,
                      max_sequence_length: int = 512, **kwargs: Any) -> ZImageDenoiser:
        """Wrap ``pipe.transformer``; the empty prompt is encoded with ``pipe.encode_prompt``."""
        if null_embeds is None and getattr(pipe, "text_encoder", None) is not None:
            with torch.no_grad():
                pos, _ = pipe.encode_prompt("", device=pipe.transformer.device,
                                            do_classifier_free_guidance=False,
                                            max_sequence_length=max_sequence_length)
            null_embeds = pos[0]
        return cls(pipe.transformer, null_embeds=null_embeds, **kwargs)

    def builder_spec(self) -> tuple[str, dict[str, Any]]:
        """``(callable path, kwargs)`` that rebuilds this architecture (see ``export.py``)."""
        return ("fewstep.teachers.diffusers.zimage:ZImageDenoiser.from_config",
                {"config": _jsonable_config(self.transformer.config)})

    # -- conversions --------------------------------------------------------------------------
    @staticmethod
    def time_input(sigma: Tensor) -> Tensor:
        """The transformer's time input ``t = 1 - sigma``."""
        return 1.0 - sigma

    @staticmethod
    def x0_from_raw(x: Tensor, sigma: Tensor | float, raw: Tensor) -> Tensor:
        """``x0_hat = x_sigma + sigma * raw`` (``raw = -v``)."""
        return x + expand_like(sigma, x) * raw.to(x.dtype)

    def _sigma_vec(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        s = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        return s.expand(x.shape[0]) if s.ndim == 0 else s.float()

    def _caption_list(self, cond: PromptEmbeds | Sequence[Tensor], batch: int,
                      dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        if cond is None:
            raise ValueError("ZImageDenoiser needs a PromptEmbeds cond (use null_cond for CFG)")
        feats = cond.to_list() if isinstance(cond, PromptEmbeds) else list(cond)
        if len(feats) == 1 and batch > 1:
            feats = feats * batch
        if len(feats) != batch:
            raise ValueError(f"cond has {len(feats)} rows, x has batch {batch}")
        return [f.to(device=device, dtype=dtype) for f in feats]

    def raw(self, x: Tensor, sigma: Tensor | float,
            cond: PromptEmbeds | Sequence[Tensor]) -> Tensor:
        """The transformer's native output ``-v`` as ``(B, C, H, W)`` (dtype of the model)."""
        if x.ndim != 4:
            raise ValueError(f"expected latents (B, C, H, W), got {tuple(x.shape)}")
        s = self._sigma_vec(x, sigma)
        dtype = self.transformer.dtype
        xs = list(x.to(dtype).unsqueeze(2).unbind(0))
        caps = self._caption_list(cond, x.shape[0], dtype, x.device)
        out = self.transformer(xs, self.time_input(s), caps, return_dict=False)[0]
        return torch.stack(list(out), dim=0).squeeze(2)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        """``x0_hat`` ``(B, C, H, W)`` in ``x``'s dtype."""
        return self.x0_from_raw(x, self._sigma_vec(x, sigma), self.raw(x, sigma, cond))

    # -- guidance -----------------------------------------------------------------------------
    def null_cond(self, cond: Any) -> PromptEmbeds:
        """The empty-prompt cond with as many rows as ``cond`` (1 row if ``cond`` is None)."""
        if self.null_embeds is None:
            raise RuntimeError("ZImageDenoiser has no null_embeds; pass them at construction "
                               "(e.g. from_pipeline or a PromptCache's null embedding)")
        n = 1 if cond is None else len(cond)
        return PromptEmbeds.from_list([self.null_embeds] * n)

    def guided(self, x: Tensor, sigma: Tensor | float, cond: Any, w: float) -> Tensor:
        """CFG ``D_u + w (D_c - D_u)`` with conditional and null rows in one batched forward."""
        if w == 1.0 or cond is None:
            return self(x, sigma, cond)
        if not isinstance(cond, PromptEmbeds):
            cond = PromptEmbeds.from_list(list(cond))
        b = x.shape[0]
        if len(cond) == 1 and b > 1:
            cond = cond.repeat(b)
        s = self._sigma_vec(x, sigma)
        both = PromptEmbeds.cat([cond, self.null_cond(cond).to(cond.embeds.device)])
        d = self(torch.cat([x, x]), torch.cat([s, s]), both)
        return cfg_combine(d[b:], d[:b], w)

    def guided_zimage_scale(self, x: Tensor, sigma: Tensor | float, cond: Any,
                            guidance_scale: float) -> Tensor:
        """CFG with Z-Image's ``guidance_scale`` g (``pos + g (pos - neg)``), i.e. ``w = 1 + g``."""
        return self.guided(x, sigma, cond, w_from_zimage_scale(guidance_scale))

    # -- features for discriminator heads ----------------------------------------------------
    def features(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> list[Tensor]:
        """Image-token hidden states after each of ``feature_layers``.

        Returns ``[(B, N, dim), ...]`` with ``N = (H / p) * (W / p)`` image tokens in raster
        order (the caption tokens and sequence padding are dropped). Gradients flow to ``x``;
        wrap in ``torch.no_grad()`` yourself if you do not need them. The full forward runs.
        """
        captured: dict[int, Tensor] = {}
        handles = []
        for i in self.feature_layers:
            def hook(_m: nn.Module, _inp: Any, out: Tensor, i: int = i) -> None:
                captured[i] = out
            handles.append(self.transformer.layers[i].register_forward_hook(hook))
        try:
            self.raw(x, sigma, cond)
        finally:
            for h in handles:
                h.remove()
        p = self.transformer.all_patch_size[0]
        n = (x.shape[-2] // p) * (x.shape[-1] // p)
        return [captured[i][:, :n] for i in self.feature_layers]

    # -- memory / precision --------------------------------------------------------------------
    def set_gradient_checkpointing(self, enabled: bool = True,
                                   checkpoint_fn: Any = None) -> None:
        """Turn block-level gradient checkpointing on/off.

        ``checkpoint_fn(module, *args)`` replaces diffusers' default (use
        :meth:`fewstep.student.lora.PerStepLoRA.checkpoint_fn` with per-step LoRA, so
        that recomputation in backward uses the adapter that was active in forward).
        """
        if enabled:
            self.transformer.enable_gradient_checkpointing(checkpoint_fn)
        else:
            self.transformer.disable_gradient_checkpointing()


def _jsonable_config(config: Any) -> dict[str, Any]:
    out = {}
    for k, v in dict(config).items():
        if k.startswith("_"):
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def init_pad_tokens(transformer: nn.Module, std: float = 0.02,
                    generator: torch.Generator | None = None) -> None:
    """Give the transformer's learned pad tokens finite values (random construction can leave
    them uninitialised, which produces NaNs in padded positions)."""
    with torch.no_grad():
        for name in ("x_pad_token", "cap_pad_token", "siglip_pad_token"):
            p = getattr(transformer, name, None)
            if isinstance(p, torch.Tensor):
                p.copy_(torch.randn(p.shape, generator=generator) * std)


__all__ = ["ZIMAGE_LORA_TARGETS", "PromptEmbeds", "ZImageDenoiser", "init_pad_tokens"]
