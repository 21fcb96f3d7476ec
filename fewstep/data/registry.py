"""Built-in data sets: ``data: <name>`` names an entry of :data:`DATASETS`.

A built-in data set is one module that registers a :class:`BuiltinData` (how to load its
splits, its sample shape and classes, how it is scored, its shipped teacher)::

    DATASETS.register("digits")(BuiltinData((1, 8, 8), 10, load_digits_split,
                                            teacher_file="teacher_digits.safetensors",
                                            features="digits_classifier"))

:mod:`fewstep.data` imports the built-in ones (digits, the 2-D toys); a user's data set
registers from a module named under ``plugins:``. Everything else -- the trainer, ``fewstep
eval``, the validators -- asks the registry, so adding a data set touches one file (plus its
shipped assets, if any). Your own images need no entry: ``data: path/to/images``
(:mod:`fewstep.data.spec`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from fewstep.assets import ASSETS
from fewstep.utils.registry import Registry

#: ``split -> (x (N, *data_shape), labels (N,) long or None)``; split is ``train`` or
#: ``heldout`` (``digits`` also takes ``all``)
SplitLoader = Callable[[str], "tuple[Tensor, Tensor | None]"]


@dataclass(frozen=True)
class BuiltinData:
    """A data set fewstep ships or generates itself.

    Attributes:
        data_shape: one sample, ``(C, H, W)`` for images in ``[-1, 1]`` or ``(2,)`` for points.
        num_classes: class labels ``0 .. C - 1`` (0: unconditional; the null class is ``C``).
        load: the split loader (:data:`SplitLoader`); deterministic.
        points: a 2-D point cloud, scored with sliced Wasserstein distance and mode coverage;
            otherwise images, scored in :attr:`features`.
        features: the default feature space of its image metrics (``fewstep eval --features``:
            ``pixels``, ``digits_classifier``, ``classifier:FILE``).
        teacher_file: the shipped teacher in ``fewstep/assets`` (``teacher.path: null``).
    """

    data_shape: tuple[int, ...]
    num_classes: int
    load: SplitLoader
    points: bool = False
    features: str = "pixels"
    teacher_file: str | None = None

    @property
    def teacher_path(self) -> Path | None:
        """The shipped teacher (``None`` if the data set has none)."""
        return ASSETS / self.teacher_file if self.teacher_file else None


#: ``data`` name -> built-in data set
DATASETS: Registry[BuiltinData] = Registry("built-in data set", "data")


def shipped_teacher(data: object) -> Path | None:
    """The shipped teacher of the built-in data set ``data`` (``None``: not built in, or no
    teacher ships for it)."""
    return DATASETS.get(data).teacher_path if isinstance(data, str) and data in DATASETS else None

__all__ = ["DATASETS", "BuiltinData", "SplitLoader", "shipped_teacher"]
