"""Build networks and denoisers from plain-dict configs stored beside their weights.

A network config is ``{"type": <a name in NETWORKS>, ...kwargs}`` (built in: ``resmlp``,
``unet``; each network class registers itself with ``@NETWORKS.register(name)``); a denoiser
config adds
``{"prediction": ..., "time_input": ..., "null_class": int | None}``. Denoisers around a
network that supports gradient checkpointing (the UNet) expose ``set_gradient_checkpointing``
(:class:`CheckpointableDenoiser`), which the trainer's ``train.gradient_checkpointing`` uses.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from fewstep.core.denoiser import NetworkDenoiser, SupportsGradientCheckpointing
from fewstep.utils.registry import Registry

#: ``network.type`` -> network class (the package imports the built-in ones)
NETWORKS: Registry[type[nn.Module]] = Registry("network type", "network.type")


class CheckpointableDenoiser(NetworkDenoiser):
    """A :class:`NetworkDenoiser` whose network has ``set_gradient_checkpointing``."""

    def set_gradient_checkpointing(self, enabled: bool = True, checkpoint_fn: Any = None) -> None:
        """Forwarded to the network (block-level checkpointing)."""
        net = self.net
        assert isinstance(net, SupportsGradientCheckpointing)  # what makes it this class
        net.set_gradient_checkpointing(enabled, checkpoint_fn)


def build_network(cfg: dict[str, Any]) -> nn.Module:
    """``cfg["type"]`` names the class in :data:`NETWORKS`; other keys are its kwargs."""
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in NETWORKS:
        raise ValueError(f"network.type must be one of {NETWORKS.names()}, got {kind!r}")
    return NETWORKS.get(kind)(**cfg)


def label_null_cond(null_class: int):
    """``cond -> full_like(cond, null_class)`` for class-label conditioning."""
    def fn(cond: Tensor | None) -> Tensor | None:
        return None if cond is None else cond.new_full(cond.shape, null_class)
    return fn


def network_denoiser(net_cfg: dict[str, Any], prediction: str = "velocity",
                   time_input: str = "sigma", null_class: int | None = None) -> NetworkDenoiser:
    """A :class:`NetworkDenoiser` around :func:`build_network` (weights uninitialised)."""
    net = build_network(net_cfg)
    nc = label_null_cond(null_class) if null_class is not None else None
    cls = CheckpointableDenoiser if hasattr(net, "set_gradient_checkpointing") else \
        NetworkDenoiser
    return cls(net, prediction=prediction, time_input=time_input,  # type: ignore[arg-type]
               null_cond=nc)
