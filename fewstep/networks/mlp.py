"""Residual MLP velocity network for small data (8x8 digits flattened to 64, or 2-D points).

``ResMLP(x, t, labels)``: ``x`` is ``(B, *data_shape)``, ``t`` is ``(B,)`` (the noise level
``sigma`` for our teachers), ``labels`` is ``(B,)`` long with ``num_classes`` as the null class,
or ``None`` (unconditional / all-null). Output has the shape of ``x``.

Time enters through Fourier features; class through an embedding; both modulate every residual
block with a scale and shift (adaLN-style), which conditions much better than concatenation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fewstep.networks.registry import NETWORKS


class FourierTime(nn.Module):
    """``t (B,) -> (B, dim)`` sinusoidal features of ``t * scale``, then an MLP."""

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.scale = scale
        # not ``self.half``: that would hide ``nn.Module.half()``
        self.num_freqs = dim // 2
        self.mlp = nn.Sequential(nn.Linear(2 * self.num_freqs, dim), nn.SiLU(),
                                 nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        n = self.num_freqs
        freqs = torch.exp(-math.log(10000.0) * torch.arange(n, device=t.device,
                                                            dtype=torch.float32) / n)
        ang = (t.float() * self.scale)[:, None] * freqs[None]
        dtype = next(self.mlp.parameters()).dtype  # the first linear layer's weight
        return self.mlp(torch.cat([ang.cos(), ang.sin()], dim=1).to(dtype))


class ResBlock(nn.Module):
    """``h + MLP(LN(h) * (1 + scale) + shift)`` with ``(scale, shift)`` from the embedding."""

    def __init__(self, hidden: int, emb: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.mod = nn.Linear(emb, 2 * hidden)
        self.fc1 = nn.Linear(hidden, 2 * hidden)
        self.fc2 = nn.Linear(2 * hidden, hidden)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        scale, shift = self.mod(e).chunk(2, dim=1)
        z = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(self.drop(nn.functional.silu(self.fc1(z))))


@NETWORKS.register("resmlp")
class ResMLP(nn.Module):
    """Class-conditional residual MLP; see module docstring for the call convention."""

    #: default per-step LoRA targets (module-name suffixes): the residual blocks' MLPs
    lora_targets = ("fc1", "fc2")

    def __init__(self, data_shape: tuple[int, ...] | list[int], hidden: int = 512, depth: int = 4,
                 num_classes: int = 0, emb: int = 256, dropout: float = 0.0,
                 time_scale: float = 1000.0) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.num_classes = num_classes
        d = math.prod(self.data_shape)
        self.inp = nn.Linear(d, hidden)
        self.time = FourierTime(emb, time_scale)
        self.label = nn.Embedding(num_classes + 1, emb) if num_classes > 0 else None
        self.blocks = nn.ModuleList(ResBlock(hidden, emb, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _embed(self, t: Tensor, labels: Tensor | None) -> Tensor:
        e = self.time(t)
        if self.label is not None:
            if labels is None:
                labels = torch.full((t.shape[0],), self.num_classes, device=t.device,
                                    dtype=torch.long)
            e = e + self.label(labels)
        return nn.functional.silu(e)

    def features(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> list[Tensor]:
        """Hidden states ``[(B, hidden)] * (depth + 1)``: after the input layer and each block."""
        e = self._embed(t, labels)
        h = self.inp(x.flatten(1))
        feats = [h]
        for blk in self.blocks:
            h = blk(h, e)
            feats.append(h)
        return feats

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.features(x, t, labels)[-1]
        return self.out(self.out_norm(h)).reshape(x.shape)
