"""2-D toy distributions ``(N, 2)`` for fast tests and for sharp few-step maps.

* ``8gaussians``: 8 modes on a circle of radius 2, each with std 0.1;
* ``checkerboard``: uniform on the 8 black squares of a 4x4 board on [-2, 2]^2;
* ``moons``: scikit-learn's two moons, centred and scaled.

Each distribution has known modes (:func:`toy_modes`) used for mode coverage.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from fewstep.data.registry import DATASETS, BuiltinData

TOY_NAMES = ("8gaussians", "checkerboard", "moons")


def _8g_centres() -> Tensor:
    ang = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
    return 2.0 * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)


def _checker_centres() -> Tensor:
    cells = [(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0]
    return torch.tensor([[-2.0 + i + 0.5, -2.0 + j + 0.5] for i, j in cells])


def toy_modes(name: str) -> Tensor:
    """Centres ``(M, 2)`` of the distribution's modes (squares for the checkerboard)."""
    if name == "8gaussians":
        return _8g_centres()
    if name == "checkerboard":
        return _checker_centres()
    if name == "moons":
        # ends and apex of each arc (upper: t = 0, pi/2, pi; lower likewise), after centring
        return torch.tensor([[0.5, -0.25], [-0.5, 0.75], [-1.5, -0.25],
                             [-0.5, 0.25], [0.5, -0.75], [1.5, 0.25]])
    raise ValueError(f"unknown toy {name!r}; choose from {TOY_NAMES}")


def toy_sample(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n`` points ``(n, 2)`` from the named toy distribution."""
    if name == "8gaussians":
        idx = torch.randint(0, 8, (n,), generator=generator)
        return _8g_centres()[idx] + 0.1 * torch.randn(n, 2, generator=generator)
    if name == "checkerboard":
        idx = torch.randint(0, 8, (n,), generator=generator)
        return _checker_centres()[idx] + torch.rand(n, 2, generator=generator) - 0.5
    if name == "moons":
        t = torch.rand(n, generator=generator) * math.pi
        upper = torch.rand(n, generator=generator) < 0.5
        x = torch.where(upper, torch.cos(t), 1.0 - torch.cos(t))
        y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
        pts = torch.stack([x, y], dim=1) - torch.tensor([0.5, 0.25])
        return pts + 0.05 * torch.randn(n, 2, generator=generator)
    raise ValueError(f"unknown toy {name!r}; choose from {TOY_NAMES}")


TOY_TRAIN_SIZE = 20000
TOY_HELDOUT_SIZE = 5000


def toy_split(name: str, split: str) -> tuple[Tensor, None]:
    """Fixed draws: ``train`` with seed 0 (20 000 points), ``heldout`` with seed 1 (5 000)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be train|heldout, got {split!r}")
    seed, n = (0, TOY_TRAIN_SIZE) if split == "train" else (1, TOY_HELDOUT_SIZE)
    return toy_sample(name, n, torch.Generator().manual_seed(seed)), None


for _name in TOY_NAMES:
    DATASETS.register(_name)(BuiltinData(
        (2,), 0, functools.partial(toy_split, _name), points=True,
        teacher_file=f"teacher_{_name}.safetensors"))
