"""Every bad-data case fails before training with one line naming the file / index; the CLI
exits with code 2 (no traceback)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fewstep.app.cli import app
from fewstep.data.images import load_image_data
from fewstep.errors import ConfigError
from tests.data.conftest import write_images


def _err(data: object) -> str:
    with pytest.raises(ConfigError) as e:
        load_image_data(data)  # type: ignore[arg-type]
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("data")
    return msg


def _npy(tmp_path: Path, a: np.ndarray, name: str = "x.npy") -> str:
    np.save(tmp_path / name, a)
    return str(tmp_path / name)


def test_empty_sets(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "no images found" in _err(str(tmp_path / "empty"))
    (tmp_path / "cls" / "a").mkdir(parents=True)
    assert re.search(r"cls/a: class folder holds no images", _err(str(tmp_path / "cls")))
    assert "holds no images" in _err(_npy(tmp_path, np.zeros((0, 1, 8, 8), np.float32)))


def test_missing_path_and_single_image(tmp_path: Path) -> None:
    assert "no such file or folder" in _err(str(tmp_path / "nope"))
    p = write_images(tmp_path / "one", 1)[0]
    assert "single image" in _err(str(p))


def test_unreadable_and_non_image_files(tmp_path: Path) -> None:
    write_images(tmp_path / "a", 10)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png at all")
    assert re.search(r"broken\.png: unreadable image", _err(str(tmp_path / "a")))
    write_images(tmp_path / "b", 10)
    (tmp_path / "b" / "notes.txt").write_text("hello")
    assert re.search(r"notes\.txt: not an image file", _err(str(tmp_path / "b")))
    (tmp_path / "c.npy").write_bytes(b"\x00\x01garbage")
    assert "cannot read the array file" in _err(str(tmp_path / "c.npy"))


def test_mixed_sizes_without_resize(tmp_path: Path) -> None:
    write_images(tmp_path / "m", 10, size=(12, 12))
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(tmp_path / "m" / "zz.png")
    msg = _err(str(tmp_path / "m"))
    assert "zz.png is 14x10" in msg and "data.resolution" in msg
    msg = _err({"path": str(tmp_path / "m"), "resolution": 12, "resize": "none"})
    assert "zz.png is 14x10 but data.resolution is 12" in msg


def test_nan_inf(tmp_path: Path) -> None:
    x = np.zeros((20, 1, 8, 8), np.float32)
    x[7, 0, 3, 3] = np.nan
    assert "image 7 contains nan" in _err(_npy(tmp_path, x))
    x[7, 0, 3, 3] = np.inf
    assert "image 7 contains inf" in _err(_npy(tmp_path, x))


def test_values_outside_the_range(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32) * 255
    msg = _err(_npy(tmp_path, x))  # float 0..255 is never read raw
    assert "declare data.value_range" in msg
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    x[4, 0, 0, 0] = 1.5
    msg = _err({"path": _npy(tmp_path, x), "value_range": "unit"})
    assert "image 4 has value 1.5, outside the declared data.value_range unit" in msg
    msg = _err(_npy(tmp_path, np.arange(20 * 64).reshape(20, 1, 8, 8)))
    assert "integer dtype int64" in msg


def test_labels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    y = np.arange(20) % 3
    y[5] = -1
    np.savez(tmp_path / "neg.npz", x=x, y=y)
    assert "label -1 at index 5 is negative" in _err(str(tmp_path / "neg.npz"))
    y = np.arange(20) % 3
    y[9] = 3
    np.savez(tmp_path / "null.npz", x=x, y=y)
    msg = _err({"path": str(tmp_path / "null.npz"), "num_classes": 3})
    assert "label 3 at index 9 equals the null class" in msg
    y[9] = 7
    np.savez(tmp_path / "big.npz", x=x, y=y)
    msg = _err({"path": str(tmp_path / "big.npz"), "num_classes": 3})
    assert "label 7 at index 9 is outside [0, 3)" in msg
    np.savez(tmp_path / "shape.npz", x=x, y=np.zeros(19, np.int64))
    assert "labels have shape (19,), expected (20,)" in _err(str(tmp_path / "shape.npz"))
    np.savez(tmp_path / "float.npz", x=x, y=np.full(20, 0.5))
    assert "labels must be integers" in _err(str(tmp_path / "float.npz"))


@pytest.mark.parametrize(("shape", "needle"), [
    ((20, 8, 8), "(N, H, W) without a channel axis"),
    ((20, 64), "(N, D) flat vectors"),
    ((20, 8, 8, 3), "looks channels-last (N, H, W, C)"),
    ((20, 5, 8, 8), "axis 1 (channels) must be 1 or 3"),
])
def test_wrong_layouts(tmp_path: Path, shape: tuple[int, ...], needle: str) -> None:
    msg = _err(_npy(tmp_path, np.zeros(shape, np.float32)))
    assert needle in msg and "x.npy" in msg


def test_too_few_images_for_the_split(tmp_path: Path) -> None:
    write_images(tmp_path / "few", 5)
    msg = _err(str(tmp_path / "few"))
    assert "too few images (5) for a held-out fraction of 0.1" in msg
    write_images(tmp_path / "ok", 12)
    write_images(tmp_path / "held", 1, seed=3)
    assert "needs at least 2 images" in _err({"path": str(tmp_path / "ok"),
                                               "heldout": str(tmp_path / "held")})


def test_bad_options(tmp_path: Path) -> None:
    assert "data.resolutio: unknown key" in _err({"path": str(tmp_path), "resolutio": 8})
    assert "data.heldout" in _err({"path": str(tmp_path), "heldout": 1.5})


def test_cli_exit_code_2(tmp_path: Path) -> None:
    np.save(tmp_path / "hwc.npy", np.zeros((20, 8, 8, 3), np.float32))
    runner = CliRunner()
    r = runner.invoke(app, ["teacher", "train", "--data", str(tmp_path / "hwc.npy"), "--out",
                            str(tmp_path / "t.safetensors"), "--quiet"])
    assert r.exit_code == 2
    assert "looks channels-last" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["demo", "--data", str(tmp_path / "missing"), "--out",
                            str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 2 and "no such file or folder" in r.output
    assert not (tmp_path / "t.safetensors").exists()


def test_binary_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "weights.yaml"
    bad.write_bytes(bytes(range(256)) * 4)
    r = CliRunner().invoke(app, ["distill", "--config", str(bad), "--quiet"])
    assert r.exit_code == 2
    assert "is a binary file, expected a config file" in r.output and "Traceback" not in r.output
