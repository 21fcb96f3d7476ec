"""Image files in every bit depth and mode read to the right range; FIFOs and out-of-range
labels refused before anything is opened or sized."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewstep.data.check import check_labels
from fewstep.data.images import load_image_data
from fewstep.errors import ConfigError


@pytest.fixture()
def no_hang() -> Iterator[None]:
    """A blocking open would hang: turn that into a failure after 60 s."""
    def boom(*_: object) -> None:
        raise TimeoutError("blocked (a FIFO was opened)")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _write(folder: Path, n: int, convert: str | None = None, bits16: bool = False
           ) -> list[np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        v = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        im = Image.fromarray(v.astype(np.uint16) * 257) if bits16 else Image.fromarray(v)
        (im.convert(convert) if convert else im).save(folder / f"{i:03d}.png")
        out.append(v)
    return out


def _read(folder: Path) -> tuple[np.ndarray, str]:
    d = load_image_data({"path": str(folder), "heldout": 0.25})
    return d.split("all")[0].numpy(), d.value_range


@pytest.mark.parametrize("mode", ["I;16", "P", "LA", "RGBA"])
def test_modes_read_like_8bit_grey(tmp_path: Path, mode: str) -> None:
    _write(tmp_path / "g8", 12)
    _write(tmp_path / "other", 12, None if mode == "I;16" else mode, bits16=mode == "I;16")
    assert Image.open(tmp_path / "other" / "000.png").mode == mode
    want, _ = _read(tmp_path / "g8")
    got, vr = _read(tmp_path / "other")
    assert vr == ("uint16" if mode == "I;16" else "uint8")
    np.testing.assert_allclose(got, want, atol=1e-6)  # 16-bit: v * 257 / 65535 == v / 255


def test_transparent_pixels_read_as_white(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for i in range(12):
        Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "a" / f"{i}.png")
    x, _ = _read(tmp_path / "a")
    assert np.all(x == 1.0)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifos_are_refused_without_blocking(tmp_path: Path, no_hang: None) -> None:
    _write(tmp_path / "imgs", 12)
    os.mkfifo(tmp_path / "imgs" / "zz.png")
    with pytest.raises(ConfigError, match=r"zz\.png is a FIFO"):
        _read(tmp_path / "imgs")
    os.mkfifo(tmp_path / "x.npy")
    with pytest.raises(ConfigError, match=r"x\.npy is a FIFO"):
        load_image_data(str(tmp_path / "x.npy"))


def test_labels_are_checked_in_their_own_dtype_before_sizing() -> None:
    with pytest.raises(ConfigError, match="label 1000000000 at index 3: fewstep takes at most"):
        check_labels(np.array([0, 1, 2, 10**9]), 4, None, "d.npz")
    with pytest.raises(ConfigError, match="label 9223372036854775813 at index 1"):
        check_labels(np.array([0, 2**63 + 5], dtype=np.uint64), 2, None, "d.npz")
    y, n = check_labels(np.array([0.0, 2.0]), 2, None, "d.npz")
    assert y.dtype == np.int64 and n == 3
