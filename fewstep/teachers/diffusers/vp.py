"""A variance-preserving (DDPM-style) ``UNet2DModel`` as a fewstep :class:`~fewstep.Denoiser`.

The network was trained on the VP path ``x_vp = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` at
discrete timesteps ``t = 0 .. T-1`` (``abar`` = the scheduler's ``alphas_cumprod``, decreasing in
``t``). Our flow path ``x_sigma = (1 - sigma) x0 + sigma eps`` (sigma = 1 is pure noise) is the
same family up to a scale:

* ``x_vp = x_sigma / sqrt((1 - sigma)^2 + sigma^2)``,
* ``abar(sigma) = (1 - sigma)^2 / ((1 - sigma)^2 + sigma^2)``,
* the timestep fed to the network is ``t(sigma)``: the continuous solution of
  ``abar_t = abar(sigma)``, found by linear interpolation *in log-SNR*
  (``log(abar / (1 - abar))``, which is monotone in ``t``) between the two neighbouring
  discrete timesteps. Levels outside the scheduler's range are clamped to ``t = 0`` or
  ``t = T - 1`` (the network is then evaluated at its nearest trained level, while the input
  scaling still uses the exact ``sigma``).

Prediction types (``scheduler.config.prediction_type`` unless given):

* ``epsilon``: ``x0_hat = (x_sigma - sigma eps_hat) / (1 - sigma)``. **Singular at sigma = 1**:
  the denominator is clamped to ``min_one_minus_sigma`` (default: ``1 - sigma_max`` where
  ``sigma_max`` is the flow level of the scheduler's last timestep, floored at ``1e-3``), so at
  ``sigma = 1`` the output is a (large, noisy) finite extrapolation. A bias-corrected estimate
  for the first step ("noise correction", docs/methods.md §6) is a separate feature.
* ``v_prediction``: ``x0_hat = sqrt(abar) x_vp - sqrt(1 - abar) v_hat`` (no singularity).
* ``sample``: the network predicts ``x0`` directly.

Conditioning: class labels ``(B,)`` long for a UNet with ``num_class_embeds``; ``null_class``
(e.g. the extra "unconditional" label) makes :meth:`VPEpsilonDenoiser.null_cond` work for CFG.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from fewstep.core.denoiser import Denoiser
from fewstep.core.path import expand_like
from fewstep.networks.unet import unet_block_features

_PREDICTIONS = ("epsilon", "v_prediction", "sample")


def vp_alpha_bar(sigma: Tensor) -> Tensor:
    """``abar(sigma) = (1 - sigma)^2 / ((1 - sigma)^2 + sigma^2)`` (1 at sigma = 0, 0 at 1)."""
    a, s = 1.0 - sigma, sigma
    return a * a / (a * a + s * s)


def flow_sigma_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """Inverse of :func:`vp_alpha_bar`: ``sigma = s / (a + s)`` with ``a = sqrt(abar)``,
    ``s = sqrt(1 - abar)``."""
    a, s = alpha_bar.sqrt(), (1.0 - alpha_bar).clamp_min(0).sqrt()
    return s / (a + s)


def vp_input_scale(sigma: Tensor) -> Tensor:
    """``1 / sqrt((1 - sigma)^2 + sigma^2)``: multiply ``x_sigma`` by it to get ``x_vp``."""
    return ((1.0 - sigma) ** 2 + sigma**2).rsqrt()


def timestep_from_alpha_bar(alpha_bar: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Continuous timestep ``t`` with ``alphas_cumprod[t] == alpha_bar``.

    Linear interpolation in log-SNR between discrete steps; clamped to ``[0, T - 1]``.
    ``alphas_cumprod`` must be strictly decreasing. Returns float32 of ``alpha_bar``'s shape.
    """
    ac = alphas_cumprod.to(device=alpha_bar.device, dtype=torch.float64)
    eps = 1e-20
    table = torch.log(ac.clamp_min(eps)) - torch.log((1.0 - ac).clamp_min(eps))  # decreasing
    q = alpha_bar.to(torch.float64)
    lq = torch.log(q.clamp_min(eps)) - torch.log((1.0 - q).clamp_min(eps))
    neg = -table  # increasing
    idx = torch.searchsorted(neg, -lq).clamp(1, len(table) - 1)
    lo, hi = table[idx - 1], table[idx]
    frac = ((lo - lq) / (lo - hi)).clamp(0.0, 1.0)
    t = (idx - 1).to(torch.float64) + frac
    return t.clamp(0.0, len(table) - 1).to(torch.float32)


@runtime_checkable
class _CheckpointingNet(Protocol):
    """A network with diffusers' block-level gradient checkpointing switches (``ModelMixin``)."""

    def enable_gradient_checkpointing(self, gradient_checkpointing_func: Any = None) -> None: ...

    def disable_gradient_checkpointing(self) -> None: ...


class VPEpsilonDenoiser(Denoiser):
    """``x0_hat = D(x_sigma, sigma, labels)`` around a VP ``UNet2DModel`` (see module docstring).

    Args:
        unet: ``unet(sample, timestep, class_labels=None, return_dict=False)[0]``, e.g.
            ``diffusers.UNet2DModel``; ``sample`` is ``(B, C, H, W)``, ``timestep`` ``(B,)`` float.
        alphas_cumprod: ``(T,)`` decreasing, e.g. ``DDPMScheduler(...).alphas_cumprod``.
        prediction_type: ``epsilon`` (default), ``v_prediction`` or ``sample``.
        null_class: label used by :meth:`null_cond` (``None``: unconditional model).
        min_one_minus_sigma: clamp of ``1 - sigma`` in the epsilon -> x0 conversion.
    """

    alphas_cumprod: Tensor  # (T,) float32 buffer

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor, prediction_type: str = "epsilon",
                 null_class: int | None = None, min_one_minus_sigma: float | None = None) -> None:
        super().__init__()
        if prediction_type not in _PREDICTIONS:
            raise ValueError(f"prediction_type must be one of {_PREDICTIONS}, "
                             f"got {prediction_type!r}")
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2 or not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing with >= 2 entries")
        self.unet = unet
        self.prediction_type = prediction_type
        self.null_class = null_class
        self.register_buffer("alphas_cumprod", ac.float(), persistent=False)
        sigma_max = float(flow_sigma_from_alpha_bar(ac[-1]))
        self.sigma_min = float(flow_sigma_from_alpha_bar(ac[0]))
        self.sigma_max = sigma_max
        self.min_one_minus_sigma = (max(1.0 - sigma_max, 1e-3) if min_one_minus_sigma is None
                                    else float(min_one_minus_sigma))

    @classmethod
    def from_scheduler(cls, unet: nn.Module, scheduler: Any, **kwargs: Any) -> VPEpsilonDenoiser:
        """Take ``alphas_cumprod`` and ``prediction_type`` from a DDPM/DDIM-style scheduler."""
        kwargs.setdefault("prediction_type", scheduler.config.get("prediction_type", "epsilon"))
        return cls(unet, scheduler.alphas_cumprod, **kwargs)

    def timestep(self, sigma: Tensor) -> Tensor:
        """Continuous network timestep ``(B,)`` for flow levels ``sigma (B,)``."""
        return timestep_from_alpha_bar(vp_alpha_bar(sigma.double()), self.alphas_cumprod)

    def raw(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        """The network's native prediction at ``(x_vp, t(sigma))``, shape of ``x``."""
        s = self._sigma_vec(x, sigma)
        x_vp = x * expand_like(vp_input_scale(s), x)
        labels = cond
        if labels is None and getattr(self.unet, "class_embedding", None) is not None:
            if self.null_class is None:
                raise ValueError("class-conditional UNet needs labels "
                                 "(or null_class for cond=None)")
            labels = torch.full((x.shape[0],), self.null_class, device=x.device, dtype=torch.long)
        dtype = next(self.unet.parameters()).dtype
        out = self.unet(x_vp.to(dtype), self.timestep(s), class_labels=labels, return_dict=False)[0]
        return out.to(x.dtype)

    def to_x0(self, x: Tensor, sigma: Tensor, out: Tensor) -> Tensor:
        """Convert a native prediction to ``x0_hat`` (see module docstring)."""
        s = expand_like(sigma, x)
        if self.prediction_type == "epsilon":
            return (x - s * out) / (1.0 - s).clamp_min(self.min_one_minus_sigma)
        if self.prediction_type == "v_prediction":
            ab = vp_alpha_bar(s)
            return ab.sqrt() * x * vp_input_scale(s) - (1.0 - ab).sqrt() * out
        return out

    def _sigma_vec(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        t = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        return t.expand(x.shape[0]) if t.ndim == 0 else t.float()

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        """``x0_hat`` of shape ``x.shape``."""
        s = self._sigma_vec(x, sigma)
        return self.to_x0(x, s, self.raw(x, s, cond))

    def null_cond(self, cond: Any) -> Tensor | None:
        """``null_class`` labels shaped like ``cond`` (``None`` for unconditional models)."""
        if self.null_class is None or cond is None:
            return None
        return torch.full_like(cond, self.null_class)

    # -- features, export, memory ------------------------------------------------------------
    def features(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> list[Tensor]:
        """Outputs of the mid block and each up block as tokens ``[(B, h * w, C), ...]``
        (channel last, so discriminator heads pool over positions). The full forward runs;
        gradients flow to ``x``."""
        return unet_block_features(self.unet, lambda: self.raw(x, sigma, cond), x.dtype)

    @classmethod
    def from_unet_config(cls, unet_config: dict[str, Any], alphas_cumprod: list[float],
                         **kwargs: Any) -> VPEpsilonDenoiser:
        """A randomly initialised ``UNet2DModel`` from its config dict (for export)."""
        from diffusers import UNet2DModel

        return cls(UNet2DModel.from_config(dict(unet_config)), torch.tensor(alphas_cumprod),
                   **kwargs)

    def builder_spec(self) -> tuple[str, dict[str, Any]]:
        """``(callable path, kwargs)`` rebuilding this architecture (``export.py``)."""
        return ("fewstep.teachers.diffusers.vp:VPEpsilonDenoiser.from_unet_config",
                {"unet_config": _jsonable(self.unet.config),
                 "alphas_cumprod": self.alphas_cumprod.tolist(),
                 "prediction_type": self.prediction_type, "null_class": self.null_class,
                 "min_one_minus_sigma": self.min_one_minus_sigma})

    def set_gradient_checkpointing(self, enabled: bool = True, checkpoint_fn: Any = None) -> None:
        """Block-level gradient checkpointing of the UNet (``checkpoint_fn``: see
        :meth:`fewstep.student.lora.PerStepLoRA.checkpoint_fn`)."""
        unet = self.unet
        if not isinstance(unet, _CheckpointingNet):
            raise TypeError(f"{type(unet).__name__} has no diffusers gradient checkpointing")
        if enabled:
            unet.enable_gradient_checkpointing(checkpoint_fn)
        else:
            unet.disable_gradient_checkpointing()


def _jsonable(config: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()
            if not k.startswith("_")}


__all__ = ["VPEpsilonDenoiser", "flow_sigma_from_alpha_bar", "timestep_from_alpha_bar",
           "vp_alpha_bar", "vp_input_scale"]
