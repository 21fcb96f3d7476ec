"""A *problem* bundles what the trainers need to know about a data set.

``get_problem("digits")``, ``get_problem("checkerboard")``, or a user data set:
``get_problem("path/to/images")`` / ``get_problem({"path": ..., "resolution": 16})`` (see
:mod:`fewstep.data.spec`; the data are read and checked once, then cached). See
:class:`Problem`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fewstep.data.digits import DIGITS_NUM_CLASSES, DIGITS_SHAPE, load_digits_split
from fewstep.data.images import ImageData, load_image_data
from fewstep.data.spec import DataSpec, canonical_data, data_label, is_builtin
from fewstep.data.toy2d import TOY_NAMES, toy_sample

PROBLEMS = ("digits", *TOY_NAMES)
TOY_TRAIN_SIZE = 20000
TOY_HELDOUT_SIZE = 5000


@dataclass(frozen=True)
class Problem:
    """A data set.

    Attributes:
        name: ``digits``, a 2-D toy name, or the canonical form of a user data set (a resolved
            path, or a dict of options; :func:`fewstep.data.spec.canonical_data`).
        data_shape: shape of one sample, ``(1, 8, 8)``, ``(2,)`` or ``(C, H, W)``.
        num_classes: classes for conditioning (0 = unconditional); the null class is
            ``num_classes``.
    """

    name: Any
    data_shape: tuple[int, ...]
    num_classes: int

    @property
    def is_toy(self) -> bool:
        return is_builtin(self.name) and self.name in TOY_NAMES

    @property
    def is_user_data(self) -> bool:
        """A data set read from the user's files (not ``digits`` or a toy)."""
        return not is_builtin(self.name)

    @property
    def label(self) -> str:
        """Short display name (built-in name, or the file / folder name)."""
        return data_label(self.name)

    def image_data(self) -> ImageData:
        """The loaded user data set (cached); ``ValueError`` for built-in data."""
        if not self.is_user_data:
            raise ValueError(f"{self.name!r} is a built-in data set")
        return load_image_data(self.name)

    def split(self, split: str) -> tuple[Tensor, Tensor | None]:
        """``(x (N, *data_shape), labels (N,) or None)`` for ``train`` or ``heldout``.

        Toy sets are fixed draws: train with seed 0 (20 000 points), held-out with seed 1
        (5 000 points).
        """
        if self.is_user_data:
            return self.image_data().split(split)
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


def get_problem(name: str | dict[str, Any] | DataSpec) -> Problem:
    """An embedded problem by name, or a user data set (a path or a mapping with ``path:``),
    read and checked now (:class:`~fewstep.errors.ConfigError` naming the file / index)."""
    if name == "digits":
        return Problem("digits", DIGITS_SHAPE, DIGITS_NUM_CLASSES)
    if isinstance(name, str) and name in TOY_NAMES:
        return Problem(name, (2,), 0)
    key = canonical_data(name)
    d = load_image_data(key)
    return Problem(key, d.data_shape, d.num_classes)
