"""Image grids and 2-D scatter plots (matplotlib, Agg backend, PNG output)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor


def image_grid(x: Tensor, nrow: int, pad: int = 1) -> Tensor:
    """``(N, 1, H, W)`` in [-1, 1] -> one ``(H', W')`` image in [0, 1] with ``nrow`` per row;
    ``(N, 3, H, W)`` (RGB) -> ``(H', W', 3)``."""
    x = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)
    n, ch, h, w = x.shape
    rgb = ch == 3
    ncol = nrow
    nr = (n + ncol - 1) // ncol
    out = torch.ones(nr * (h + pad) + pad, ncol * (w + pad) + pad, *((3,) if rgb else ()))
    for i in range(n):
        r, c = divmod(i, ncol)
        out[pad + r * (h + pad): pad + r * (h + pad) + h,
            pad + c * (w + pad): pad + c * (w + pad) + w] = x[i].permute(1, 2, 0) if rgb \
            else x[i, 0]
    return out


def save_grid(path: str | Path, x: Tensor, nrow: int = 10, title: str | None = None,
              scale: float = 0.3) -> None:
    """Write an image grid of ``(N, 1, H, W)`` samples, or a scatter of ``(N, 2)`` points."""
    save_panels(path, [x], [title or ""], nrow=nrow, scale=scale)


def save_panels(path: str | Path, panels: Sequence[Tensor], titles: Sequence[str],
                nrow: int = 10, scale: float = 0.3) -> None:
    """Side-by-side panels (same-noise comparisons): image grids or 2-D scatters."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    k = len(panels)
    if panels[0].ndim == 2:
        fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.4), squeeze=False)
        for ax, p, t in zip(axes[0], panels, titles, strict=True):
            p = p.detach().float().cpu()
            ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.5)
            ax.set_xlim(-2.6, 2.6)
            ax.set_ylim(-2.6, 2.6)
            ax.set_aspect("equal")
            ax.set_title(t, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    else:
        grids = [image_grid(p, nrow) for p in panels]
        h, w = grids[0].shape[:2]
        fig, axes = plt.subplots(1, k, figsize=(k * w * scale / 8 + 0.2, h * scale / 8 + 0.5),
                                 squeeze=False)
        for ax, g, t in zip(axes[0], grids, titles, strict=True):
            ax.imshow(g, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(t, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
