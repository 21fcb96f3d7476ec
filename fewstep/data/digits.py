"""scikit-learn's 8x8 digits (1797 images, 10 classes) as ``(N, 1, 8, 8)`` tensors in [-1, 1].

Split (fixed, documented): a stratified 80 / 20 split with ``random_state=0`` gives 1437 train
and 360 held-out images. Pixel values 0..16 are mapped to ``x / 8 - 1``. Labels are 0..9; the
null class used for classifier-free guidance is :data:`DIGITS_NULL_CLASS` = 10.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fewstep.data.registry import DATASETS, BuiltinData

DIGITS_SHAPE = (1, 8, 8)
DIGITS_NUM_CLASSES = 10
DIGITS_NULL_CLASS = 10
SPLIT_SEED = 0
HELDOUT_FRACTION = 0.2


@lru_cache(maxsize=1)
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=HELDOUT_FRACTION, random_state=SPLIT_SEED,
                                          stratify=y)
    return xtr, ytr, xte, yte


def load_digits_split(split: Literal["train", "heldout", "all"] = "train") -> tuple[Tensor, Tensor]:
    """Return ``(images (N, 1, 8, 8) float32 in [-1, 1], labels (N,) int64)`` for a split."""
    xtr, ytr, xte, yte = _split()
    if split == "train":
        x, y = xtr, ytr
    elif split == "heldout":
        x, y = xte, yte
    elif split == "all":
        x, y = np.concatenate([xtr, xte]), np.concatenate([ytr, yte])
    else:
        raise ValueError(f"split must be train|heldout|all, got {split!r}")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def to_unit(x: Tensor) -> Tensor:
    """Map model space [-1, 1] to [0, 1] for display, clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


DATASETS.register("digits")(BuiltinData(
    DIGITS_SHAPE, DIGITS_NUM_CLASSES, load_digits_split,  # type: ignore[arg-type]
    features="digits_classifier", teacher_file="teacher_digits.safetensors"))
