"""Any diffusers transformer / UNet of a known family (:mod:`.families`) as a fewstep
:class:`~fewstep.Denoiser`, with what it predicts read from the pipeline's scheduler.

Two paths (our convention: ``x_sigma = (1 - sigma) x0 + sigma eps``, sigma = 1 is noise):

* **flow** (``FlowMatch*`` schedulers): the scheduler steps ``x + (sigma' - sigma) out`` so the
  model output (times the family's ``sign``) is the velocity ``v = eps - x0`` and
  ``x0_hat = x_sigma - sigma v``. The time input is the family's (``sigma``, ``1000 sigma`` or
  ``1 - sigma``).
* **vp** (DDPM / DDIM / PNDM / DPM-Solver ... with ``alphas_cumprod``): as
  :class:`~fewstep.teachers.diffusers.vp.VPEpsilonDenoiser` (input scaled to the VP
  path, continuous timestep by log-SNR interpolation, ``epsilon`` / ``v_prediction`` /
  ``sample`` from ``scheduler.config.prediction_type``), with the family's call signature.

Conditioning is a :class:`~fewstep.core.conditioning.PromptEmbeds`; :meth:`null_cond` repeats the
empty prompt's embedding (``null_embeds (L0, D)``, ``null_pooled (P,)``), for CFG.
"""

from __future__ import annotations

from typing import Any

import diffusers
import torch
from torch import Tensor, nn

from fewstep.core.conditioning import PromptEmbeds
from fewstep.core.denoiser import Denoiser
from fewstep.core.path import expand_like
from fewstep.teachers.diffusers.families import FAMILIES, Family
from fewstep.teachers.diffusers.vp import VPEpsilonDenoiser

_TIME = {"sigma": lambda s: s, "sigma_1000": lambda s: 1000.0 * s,
         "one_minus_sigma": lambda s: 1.0 - s}
#: a family's ``time`` name -> the network's time input as a function of sigma (export)
TIME_INPUTS = _TIME


class _PromptConditioned(nn.Module):
    """Null-prompt buffers, :meth:`null_cond`, features and LoRA targets shared by both paths."""

    family_name: str
    net: nn.Module

    def _init_null(self, null: PromptEmbeds | None) -> None:
        e = None if null is None else null.embeds[0, null.mask[0]].detach()
        p = None if null is None or null.pooled is None else null.pooled[0].detach()
        self.register_buffer("null_embeds", e, persistent=False)
        self.register_buffer("null_pooled", p, persistent=False)

    @property
    def family(self) -> Family:
        return FAMILIES[self.family_name]

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return self.family.lora_targets

    def null_cond(self, cond: Any) -> PromptEmbeds:
        if self.null_embeds is None:
            raise RuntimeError(f"{type(self).__name__} has no null prompt embedding (CFG)")
        n = 1 if cond is None else len(cond)
        pooled = None if self.null_pooled is None else self.null_pooled[None].expand(n, -1)
        return PromptEmbeds.from_list([self.null_embeds] * n, pooled)

    def _cast(self, cond: PromptEmbeds, batch: int, dtype: torch.dtype,
              device: torch.device) -> PromptEmbeds:
        if not isinstance(cond, PromptEmbeds):
            raise ValueError(f"{type(self).__name__} needs a PromptEmbeds cond, got "
                             f"{type(cond).__name__}")
        if len(cond) == 1 and batch > 1:
            cond = cond.repeat(batch)
        return cond.to(device, dtype)

    def _features(self, run: Any) -> list[Tensor]:
        blocks = list(getattr(self.net, self.family.blocks))
        captured: dict[int, Tensor] = {}
        handles = []
        for i, blk in enumerate(blocks):
            def hook(_m: nn.Module, _inp: Any, out: Any, i: int = i) -> None:
                captured[i] = out[-1] if isinstance(out, tuple) else out
            handles.append(blk.register_forward_hook(hook))
        try:
            run()
        finally:
            for h in handles:
                h.remove()
        feats = [captured[i] for i in range(len(blocks))]
        return [f.flatten(2).transpose(1, 2) if f.ndim == 4 else f for f in feats]

    def feature_widths(self) -> list[int]:
        """Channel width of each :meth:`features` output, from the config (``fewstep plan``)."""
        cfg = self.net.config
        n = len(getattr(self.net, self.family.blocks))
        if self.family.blocks == "up_blocks":
            return [int(c) for c in reversed(cfg["block_out_channels"])][:n]
        return [int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])] * n

    def set_gradient_checkpointing(self, enabled: bool = True, checkpoint_fn: Any = None) -> None:
        if enabled:
            self.net.enable_gradient_checkpointing(checkpoint_fn)
        else:
            self.net.disable_gradient_checkpointing()


class FlowPipelineDenoiser(_PromptConditioned, Denoiser):
    """A flow-matching diffusers network (see module docstring). ``x (B, C, H, W)``."""

    def __init__(self, net: nn.Module, family: str, null: PromptEmbeds | None = None) -> None:
        super().__init__()
        self.net, self.family_name = net, family
        self._init_null(null)

    def _sigma_vec(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        s = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        return s.expand(x.shape[0]) if s.ndim == 0 else s.float()

    def raw(self, x: Tensor, sigma: Tensor | float, cond: Any) -> Tensor:
        """The velocity ``v_hat`` (the model output times the family's sign), ``x``'s shape."""
        s = self._sigma_vec(x, sigma)
        dtype = self.net.dtype
        c = self._cast(cond, x.shape[0], dtype, x.device)
        out = self.family.call(self.net, x.to(dtype), _TIME[self.family.time](s).to(dtype), c)
        return self.family.sign * out.to(x.dtype)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        s = self._sigma_vec(x, sigma)
        return x - expand_like(s, x) * self.raw(x, s, cond)

    def features(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> list[Tensor]:
        return self._features(lambda: self.raw(x, sigma, cond))

    def builder_spec(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}:build_pipeline_denoiser",
                {"model_class": type(self.net).__name__, "model_config": jsonable(self.net.config),
                 "family": self.family_name, "path": "flow"})


class VPPipelineDenoiser(_PromptConditioned, VPEpsilonDenoiser):
    """A VP diffusers network with a family's call signature (see module docstring)."""

    def __init__(self, net: nn.Module, alphas_cumprod: Tensor, family: str,
                 prediction_type: str = "epsilon", null: PromptEmbeds | None = None,
                 min_one_minus_sigma: float | None = None) -> None:
        VPEpsilonDenoiser.__init__(self, net, alphas_cumprod, prediction_type,
                                   min_one_minus_sigma=min_one_minus_sigma)
        self.family_name = family
        self._init_null(null)

    @property
    def net(self) -> nn.Module:  # type: ignore[override]
        """The diffusers network (registered once, as ``unet``)."""
        return self.unet

    def raw(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        s = self._sigma_vec(x, sigma)
        x_vp = x * expand_like(vp_scale(s), x)
        dtype = self.net.dtype
        c = self._cast(cond, x.shape[0], dtype, x.device)
        out = self.family.call(self.net, x_vp.to(dtype), self.timestep(s).to(dtype), c)
        return self.family.sign * out.to(x.dtype)

    def null_cond(self, cond: Any) -> PromptEmbeds:
        return _PromptConditioned.null_cond(self, cond)

    def features(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> list[Tensor]:
        return self._features(lambda: self.raw(x, sigma, cond))

    def builder_spec(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}:build_pipeline_denoiser",
                {"model_class": type(self.net).__name__, "model_config": jsonable(self.net.config),
                 "family": self.family_name, "path": "vp",
                 "alphas_cumprod": self.alphas_cumprod.tolist(),
                 "prediction_type": self.prediction_type,
                 "min_one_minus_sigma": self.min_one_minus_sigma})


def vp_scale(sigma: Tensor) -> Tensor:
    """``1 / sqrt((1 - sigma)^2 + sigma^2)`` (``x_vp = x_sigma * vp_scale``)."""
    return ((1.0 - sigma) ** 2 + sigma**2).rsqrt()


def jsonable(config: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()
            if not k.startswith("_")}


def build_pipeline_denoiser(model_class: str, model_config: dict[str, Any], family: str,
                            path: str, alphas_cumprod: list[float] | None = None,
                            prediction_type: str = "epsilon",
                            min_one_minus_sigma: float | None = None) -> Denoiser:
    """Rebuild (randomly initialised) from a :meth:`builder_spec` (student reload / export)."""
    if model_class not in FAMILIES or family not in FAMILIES:
        raise ValueError(f"unknown diffusers denoiser class {model_class!r}")
    net = getattr(diffusers, model_class).from_config(dict(model_config))
    if path == "flow":
        return FlowPipelineDenoiser(net, family)
    if alphas_cumprod is None:
        raise ValueError("a vp denoiser needs alphas_cumprod")
    return VPPipelineDenoiser(net, torch.tensor(alphas_cumprod), family, prediction_type,
                              min_one_minus_sigma=min_one_minus_sigma)


__all__ = ["TIME_INPUTS", "FlowPipelineDenoiser", "VPPipelineDenoiser", "build_pipeline_denoiser",
           "jsonable", "vp_scale"]
