"""Tiny generated image sets (Pillow / numpy in ``tmp_path``) for the data-loader tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewstep.data import images as images_mod


def write_images(folder: Path, n: int, size: tuple[int, int] = (12, 12), seed: int = 0,
                 suffix: str = ".png", colour: bool = True) -> list[Path]:
    """``n`` random images ``size`` (w, h) into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        shape = (size[1], size[0], 3) if colour else (size[1], size[0])
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        p = folder / f"{i:03d}{suffix}"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """``cats/`` (12 images) and ``dogs/`` (10 images), 12x12 RGB PNG."""
    write_images(tmp_path / "set" / "cats", 12, seed=1)
    write_images(tmp_path / "set" / "dogs", 10, seed=2)
    return tmp_path / "set"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Each test reads its data from disk (the loader caches per spec within a process)."""
    images_mod._CACHE.clear()
    yield
    images_mod._CACHE.clear()
