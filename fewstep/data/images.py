"""Read a user data set (:class:`~fewstep.data.spec.DataSpec`) into checked tensors.

:func:`load_image_data` returns an :class:`ImageData`: float32 images ``(N, C, H, W)`` in
``[-1, 1]`` and int64 labels ``(N,)`` (or ``None``) for the train and held-out parts. Every
problem found on the way is a one-line :class:`~fewstep.errors.ConfigError` naming the file or
index (see :mod:`fewstep.data.check`; the readers are :mod:`fewstep.data.image_sources`).
Results are cached per canonical spec in the process.

Sources, by what ``path`` is:

* a folder of image files: class = sub-folder (sorted names = labels 0..C-1), or a flat folder
  (unconditional). Hidden files (``.*``) are skipped; any other non-image file is an error.
  Transparent pixels are composited over white.
* a folder with ``dataset_info.json`` / ``dataset_dict.json`` / ``state.json``: a Hugging Face
  ``datasets`` folder (``load_from_disk``; its ``train`` split if it has several).
* ``.npy`` (images only), ``.npz`` or ``.safetensors`` (images and optional labels).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fewstep.data.check import (
    check_split_sizes,
)
from fewstep.data.image_sources import read_source
from fewstep.data.spec import (
    DataSpec,
    as_spec,
    canonical_data,
)
from fewstep.errors import ConfigError


@dataclass
class ImageData:
    """A loaded, checked data set in model space.

    Attributes:
        x_train / x_heldout: ``(N, C, H, W)`` float32 in ``[-1, 1]``.
        y_train / y_heldout: ``(N,)`` int64 in ``[0, num_classes)``, or ``None``.
        num_classes: 0 for unconditional data.
        class_names: folder / ``ClassLabel`` names, else ``["0", "1", ...]``.
        value_range: the convention the source was read with (``uint8`` | ``unit`` |
            ``signed``).
        source: the data path.
    """

    x_train: Tensor
    y_train: Tensor | None
    x_heldout: Tensor
    y_heldout: Tensor | None
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    value_range: str = "uint8"
    source: str = ""

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def split(self, split: str) -> tuple[Tensor, Tensor | None]:
        if split == "train":
            return self.x_train, self.y_train
        if split == "heldout":
            return self.x_heldout, self.y_heldout
        if split == "all":
            y = None if self.y_train is None or self.y_heldout is None else \
                torch.cat([self.y_train, self.y_heldout])
            return torch.cat([self.x_train, self.x_heldout]), y
        raise ValueError(f"split must be train|heldout|all, got {split!r}")

    def summary(self) -> str:
        c, h, w = self.data_shape
        cls = f"{self.num_classes} classes" if self.num_classes else "unconditional"
        return (f"{self.source}: {len(self.x_train)} train + {len(self.x_heldout)} held-out "
                f"images, {c}x{h}x{w}, {cls}, read as {self.value_range}")


def _split_indices(y: np.ndarray | None, n: int, frac: float, seed: int) -> np.ndarray:
    """``round(frac * n)`` held-out indices, seeded and stratified: each class is shuffled, its
    j-th image gets the position ``(j + 0.5) / n_c``, and the lowest positions are held out
    (so every class contributes in proportion, also when ``frac * n_c < 1``)."""
    rng = np.random.default_rng(seed)
    n_held = round(frac * n)
    groups = [np.arange(n)] if y is None else [np.flatnonzero(y == c) for c in np.unique(y)]
    idx, pos = [], []
    for g in groups:
        idx.append(rng.permutation(g))
        pos.append((np.arange(len(g)) + 0.5) / len(g) + 1e-9 * rng.random(len(g)))
    if not idx:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(np.concatenate(pos), kind="stable")[:n_held]
    return np.sort(np.concatenate(idx)[order])


def _spec_key(data: Any) -> str:
    """Canonical spec + size and modification time of the source(s), so that a changed file is
    read again."""
    canon = canonical_data(data)
    spec = as_spec(canon)
    stamps = []
    for p in (spec.path, spec.heldout if isinstance(spec.heldout, str) else None):
        if p is not None and os.path.exists(p):
            st = os.stat(p)
            stamps.append([p, st.st_mtime_ns, st.st_size])
    return json.dumps([canon, stamps], sort_keys=True)


_CACHE: dict[str, ImageData] = {}


def load_image_data(data: str | dict[str, Any] | DataSpec) -> ImageData:
    """Read, check, normalise and split a user data set (cached per canonical spec)."""
    key = _spec_key(data)
    if key in _CACHE:
        return _CACHE[key]
    spec = as_spec(data)
    raw = read_source(spec.path, spec)
    n = raw.x.shape[0]
    if isinstance(spec.heldout, str):
        held = read_source(spec.heldout, spec)
        if tuple(held.x.shape[1:]) != tuple(raw.x.shape[1:]):
            raise ConfigError(f"data.heldout: {spec.heldout} has images of shape "
                              f"{tuple(held.x.shape[1:])} but {spec.path} has "
                              f"{tuple(raw.x.shape[1:])}")
        if (held.y is None) != (raw.y is None) or (raw.y is not None and held.class_names !=
                                                    raw.class_names[:len(held.class_names)]):
            raise ConfigError(f"data.heldout: {spec.heldout} does not have the same classes as "
                              f"{spec.path}")
        if held.x.shape[0] < 2:
            raise ConfigError(f"data.heldout: {spec.heldout}: needs at least 2 images")
        xtr, ytr, xte, yte = raw.x, raw.y, held.x, held.y
    else:
        idx = _split_indices(raw.y, n, spec.heldout, spec.seed)
        check_split_sizes(n, len(idx), spec.heldout, spec.path)
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        tr, te = torch.from_numpy(~mask), torch.from_numpy(mask)
        xtr, xte = raw.x[tr], raw.x[te]
        ytr = None if raw.y is None else raw.y[~mask]
        yte = None if raw.y is None else raw.y[mask]
    ncls = 0
    if raw.y is not None:
        ncls = spec.num_classes or len(raw.class_names)
    out = ImageData(xtr.float().contiguous(), None if ytr is None else torch.from_numpy(ytr),
                    xte.float().contiguous(), None if yte is None else torch.from_numpy(yte),
                    ncls, raw.class_names, raw.value_range, spec.path)
    _CACHE[key] = out
    return out


__all__ = ["ImageData", "load_image_data"]
