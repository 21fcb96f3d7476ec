"""A *problem* bundles what the trainers need to know about an embedded data set.

``get_problem("digits")`` or ``get_problem("checkerboard")``; see :class:`Problem`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fewstep.data.digits import DIGITS_NUM_CLASSES, DIGITS_SHAPE, load_digits_split
from fewstep.data.toy2d import TOY_NAMES, toy_sample

PROBLEMS = ("digits", *TOY_NAMES)
TOY_TRAIN_SIZE = 20000
TOY_HELDOUT_SIZE = 5000


@dataclass(frozen=True)
class Problem:
    """An embedded data set.

    Attributes:
        name: ``digits`` or a 2-D toy name.
        data_shape: shape of one sample, ``(1, 8, 8)`` or ``(2,)``.
        num_classes: classes for conditioning (0 = unconditional); the null class is
            ``num_classes``.
    """

    name: str
    data_shape: tuple[int, ...]
    num_classes: int

    @property
    def is_toy(self) -> bool:
        return self.name in TOY_NAMES

    def split(self, split: str) -> tuple[Tensor, Tensor | None]:
        """``(x (N, *data_shape), labels (N,) or None)`` for ``train`` or ``heldout``.

        Toy sets are fixed draws: train with seed 0 (20 000 points), held-out with seed 1
        (5 000 points).
        """
        if self.name == "digits":
            return load_digits_split(split)  # type: ignore[arg-type]
        seed, n = (0, TOY_TRAIN_SIZE) if split == "train" else (1, TOY_HELDOUT_SIZE)
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be train|heldout, got {split!r}")
        return toy_sample(self.name, n, torch.Generator().manual_seed(seed)), None

    def sample_cond(self, n: int, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> Tensor | None:
        """Conditions for ``n`` samples: labels cycling 0..C-1 (balanced), or ``None``."""
        if self.num_classes == 0:
            return None
        perm = torch.randperm(n, generator=generator)
        return (perm % self.num_classes).to(device)

    def cond_map(self, ids: Tensor | None) -> Tensor | None:
        """What the teacher takes as ``cond`` for stored condition ids: labels are their own
        condition (identity). See :class:`fewstep.data.prompts.PromptProblem` for prompts."""
        return ids


def get_problem(name: str) -> Problem:
    """Look up an embedded problem by name."""
    if name == "digits":
        return Problem("digits", DIGITS_SHAPE, DIGITS_NUM_CLASSES)
    if name in TOY_NAMES:
        return Problem(name, (2,), 0)
    raise ValueError(f"unknown data set {name!r}; choose from {PROBLEMS}")
