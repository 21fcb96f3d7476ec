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

from fewstep.data.images import ImageData, load_image_data
from fewstep.data.registry import DATASETS, BuiltinData
from fewstep.data.spec import DataSpec, canonical_data, data_label, is_builtin


def builtin_names() -> list[str]:
    """The names ``data:`` accepts besides a path: the registered built-in data sets."""
    return DATASETS.names()


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
    def builtin(self) -> BuiltinData | None:
        """The registry entry of a built-in data set (``None`` for your own images)."""
        return DATASETS.get(self.name) if is_builtin(self.name) else None

    @property
    def is_toy(self) -> bool:
        """A 2-D point cloud (scored as points, not images)."""
        return self.builtin is not None and self.builtin.points

    @property
    def default_features(self) -> str:
        """The feature space image metrics use by default (``fewstep eval --features auto``)."""
        return self.builtin.features if self.builtin is not None else "pixels"

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
        """``(x (N, *data_shape), labels (N,) or None)`` for ``train`` or ``heldout`` (a
        built-in data set's own loader, or your images' split)."""
        if self.builtin is None:
            return self.image_data().split(split)
        return self.builtin.load(split)

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
    """A built-in data set by name, or a user data set (a path or a mapping with ``path:``),
    read and checked now (:class:`~fewstep.errors.ConfigError` naming the file / index)."""
    if is_builtin(name):
        entry = DATASETS.get(name)
        return Problem(name, tuple(entry.data_shape), entry.num_classes)
    key = canonical_data(name)
    d = load_image_data(key)
    return Problem(key, d.data_shape, d.num_classes)
