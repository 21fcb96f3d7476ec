"""The Denoiser interface: every network becomes ``x0_hat = D(x_sigma, sigma, cond)``.

Conventions (see :mod:`fewstep.core.path`): ``sigma`` in [0, 1], 1 is pure noise; ``x_sigma`` has
shape ``(B, ...)``; ``sigma`` is ``(B,)`` (a scalar is broadcast); ``cond`` is whatever the
network takes as conditioning (class labels ``(B,)`` long, prompt embeddings, or ``None``).

:class:`NetworkDenoiser` adapts a network that predicts velocity, negated velocity (Z-Image),
epsilon or x0 and takes its own native time input (``sigma``, ``1 - sigma``, ``1000 sigma``).
Diffusers models get their own adapters in :mod:`fewstep.teachers.diffusers`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from fewstep.core.guidance import cfg_combine
from fewstep.core.path import FlowPath, expand_like

Prediction = Literal["velocity", "neg_velocity", "epsilon", "x0"]
TimeInput = Literal["sigma", "one_minus_sigma", "sigma_1000", "one_minus_sigma_1000"]

_TIME_INPUTS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigma": lambda s: s,
    "one_minus_sigma": lambda s: 1.0 - s,
    "sigma_1000": lambda s: 1000.0 * s,
    "one_minus_sigma_1000": lambda s: 1000.0 * (1.0 - s),
}


class Denoiser(nn.Module, ABC):
    """Abstract x0-predictor ``D(x_sigma, sigma, cond) -> x0_hat`` (same shape as ``x_sigma``)."""

    @abstractmethod
    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        """Predict clean data ``x0_hat`` of shape ``x.shape``."""

    def null_cond(self, cond: Any) -> Any:
        """The unconditional counterpart of ``cond`` (for CFG). Default: ``None``."""
        return None

    def features(self, x: Tensor, sigma: Tensor, cond: Any = None) -> list[Tensor]:
        """Intermediate activations ``[(B, ...), ...]`` for discriminator heads (optional)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose features")

    def guided(self, x: Tensor, sigma: Tensor, cond: Any, w: float) -> Tensor:
        """CFG in x0 space: ``D_u + w (D_c - D_u)``; one forward when ``w == 1``."""
        if w == 1.0 or cond is None:
            return self(x, sigma, cond)
        return cfg_combine(self(x, sigma, self.null_cond(cond)), self(x, sigma, cond), w)

    def velocity(self, x: Tensor, sigma: Tensor, cond: Any = None, w: float = 1.0) -> Tensor:
        """Velocity implied by the (guided) x0 prediction: ``v = (x - x0_hat) / sigma``."""
        return FlowPath.velocity_from_x0(x, sigma, self.guided(x, sigma, cond, w))


@runtime_checkable
class _FeatureNet(Protocol):
    """A network with its own ``features(x, t, cond) -> [(B, ...), ...]``."""

    def features(self, x: Tensor, t: Tensor, cond: Any) -> list[Tensor]: ...


@runtime_checkable
class SupportsGradientCheckpointing(Protocol):
    """A module that can recompute its activations in backward: the denoisers and networks
    with ``set_gradient_checkpointing(enabled, checkpoint_fn)``."""

    def set_gradient_checkpointing(self, enabled: bool = True,
                                   checkpoint_fn: Any = None) -> None: ...


class NetworkDenoiser(Denoiser):
    """Wrap ``net(x_in, t, cond) -> out`` as a :class:`Denoiser`.

    Args:
        net: the network. It receives ``x_sigma`` unchanged, ``t = time_input(sigma)`` of shape
            ``(B,)`` and ``cond``.
        prediction: what ``out`` is: ``velocity`` (``eps - x0``), ``neg_velocity`` (``x0 - eps``,
            Z-Image's transformer), ``epsilon`` or ``x0``.
        time_input: the network's native time variable as a function of ``sigma``.
        null_cond: maps ``cond`` to its unconditional version (e.g. labels -> null class).
    """

    def __init__(self, net: nn.Module, prediction: Prediction = "velocity",
                 time_input: TimeInput = "sigma",
                 null_cond: Callable[[Any], Any] | None = None) -> None:
        super().__init__()
        if prediction not in ("velocity", "neg_velocity", "epsilon", "x0"):
            raise ValueError("prediction must be velocity|neg_velocity|epsilon|x0, "
                             f"got {prediction!r}")
        if time_input not in _TIME_INPUTS:
            raise ValueError(f"time_input must be one of {sorted(_TIME_INPUTS)}, "
                             f"got {time_input!r}")
        self.net = net
        self.prediction = prediction
        self.time_input = time_input
        self._null_cond = null_cond

    def _sigma_vec(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        s = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        return s.expand(x.shape[0]) if s.ndim == 0 else s

    def to_x0(self, x: Tensor, sigma: Tensor, out: Tensor) -> Tensor:
        """Convert the raw network output to ``x0_hat``."""
        if self.prediction == "velocity":
            return FlowPath.x0_from_velocity(x, sigma, out)
        if self.prediction == "neg_velocity":
            return FlowPath.x0_from_velocity(x, sigma, -out)
        if self.prediction == "epsilon":
            return FlowPath.x0_from_eps(x, sigma, out)
        return out

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        s = self._sigma_vec(x, sigma)
        out = self.net(x, _TIME_INPUTS[self.time_input](s).to(x.dtype), cond)
        return self.to_x0(x, s, out.to(x.dtype))

    def null_cond(self, cond: Any) -> Any:
        return self._null_cond(cond) if self._null_cond is not None else None

    def features(self, x: Tensor, sigma: Tensor, cond: Any = None) -> list[Tensor]:
        net = self.net
        if not isinstance(net, _FeatureNet):
            return super().features(x, sigma, cond)
        s = self._sigma_vec(x, sigma)
        return net.features(x, _TIME_INPUTS[self.time_input](s).to(x.dtype), cond)


def x0_loss_weight_to_velocity(sigma: Tensor, x: Tensor) -> Tensor:
    """Weight ``1 / sigma^2`` that turns an x0 MSE into the velocity MSE at the same point."""
    return 1.0 / expand_like(sigma, x).clamp_min(1e-4) ** 2
