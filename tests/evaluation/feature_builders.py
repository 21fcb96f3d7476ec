"""A user-named feature network: ``--features builder:tests.evaluation.feature_builders:pooled``.
"""

from __future__ import annotations

from torch import Tensor, nn


class Pooled(nn.Module):
    """2x2 average pooling, flattened: ``(N, C, H, W) -> (N, C * H * W / 4)``."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.avg_pool2d(x, 2).flatten(1)


def pooled() -> nn.Module:
    return Pooled()
