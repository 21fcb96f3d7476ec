"""Discriminators ``D(x_sigma, sigma, cond) -> logits (B,)`` on re-noised samples.

* :class:`TeacherFeatureDiscriminator` (default): the *frozen* teacher's intermediate
  features (``Denoiser.features``) at the same ``(x_sigma, sigma, cond)``, each read by a small
  trainable head; a projection term ``<embed(c), h>`` adds class conditioning (as in LADD).
  Gradients reach ``x_sigma`` through the frozen teacher, never its weights.
* :class:`StandaloneDiscriminator`: a small independent network of the same call signature.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from fewstep.core.denoiser import Denoiser
from fewstep.errors import ConfigError
from fewstep.networks.mlp import FourierTime, ResMLP


class FeatureHead(nn.Module):
    """``(B, ..., d)`` features -> ``(B,)`` logit, conditioned on sigma and an optional label."""

    def __init__(self, dim: int, hidden: int = 128, num_classes: int = 0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.time = FourierTime(hidden)
        self.fc = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None

    def forward(self, h: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        if h.ndim > 2:  # tokens or maps: pool everything but the last (channel) dim
            h = h.flatten(1, -2).mean(dim=1)
        z = nn.functional.silu(self.fc(self.norm(h.float())) + self.time(sigma))
        logit = self.out(z).squeeze(-1)
        if self.embed is not None and labels is not None:
            logit = logit + (self.embed(labels) * z).sum(-1) / z.shape[-1] ** 0.5
        return logit


def _labels(cond: Any) -> Tensor | None:
    return cond if torch.is_tensor(cond) and cond.dtype == torch.long else None


class TeacherFeatureDiscriminator(nn.Module):
    """Heads on the frozen teacher's features; logit = mean over heads.

    Args:
        teacher: the frozen teacher denoiser; kept by reference and never trained.
        feature_dims: channel size of each feature returned by ``teacher.features``.
        layers: which feature indices get a head (negative indices allowed).
        num_classes: > 0 adds a projection term for class labels.
    """

    def __init__(self, teacher: Denoiser, feature_dims: list[int], layers: list[int],
                 hidden: int = 128, num_classes: int = 0) -> None:
        super().__init__()
        self._teacher = [teacher]  # a list hides it from .parameters() / state_dict()
        n = len(feature_dims)
        bad = [i for i in layers if not -n <= i < n]
        if not layers:
            raise ConfigError("gan.layers: must name at least one teacher feature map")
        if bad:
            raise ConfigError(f"gan.layers: index {bad[0]} is out of range: the teacher returns "
                              f"{n} feature maps (valid indices {-n} .. {n - 1})")
        self.layers = [i % n for i in layers]
        self.heads = nn.ModuleList(FeatureHead(feature_dims[i], hidden, num_classes)
                                   for i in self.layers)

    def head_logits(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        """``(H, B)``: every head's logit (LADD's loss is a sum of per-head losses)."""
        with record_function("teacher_forward"):
            feats = self._teacher[0].features(x, sigma, cond)
        labels = _labels(cond)
        logits = [head(feats[i], sigma, labels) for head, i in zip(self.heads, self.layers,
                                                                      strict=True)]
        return torch.stack(logits, 0)

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        """``(B,)``: the mean of the heads' logits."""
        return self.head_logits(x, sigma, cond).mean(0)


class StandaloneDiscriminator(nn.Module):
    """A small :class:`ResMLP` trunk (its own weights) with a :class:`FeatureHead`."""

    def __init__(self, data_shape: tuple[int, ...], hidden: int = 256, depth: int = 3,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.trunk = ResMLP(data_shape, hidden=hidden, depth=depth, num_classes=num_classes,
                            emb=128)
        self.head = FeatureHead(hidden, 128, num_classes)

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        labels = _labels(cond)
        h = self.trunk.features(x, sigma, labels)[-1]
        return self.head(h, sigma, labels)

    def head_logits(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        """``(1, B)``: the one head's logit."""
        return self.forward(x, sigma, cond)[None]


#: what :func:`~fewstep.distill.parts.builders.build_discriminator` returns
Discriminator = TeacherFeatureDiscriminator | StandaloneDiscriminator
