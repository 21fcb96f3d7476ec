"""Each data source and option: image folders, arrays, saved datasets, canonical specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file

from fewstep.data.images import load_image_data
from fewstep.data.problem import get_problem
from fewstep.data.spec import canonical_data
from fewstep.distill.config import DistillConfig
from tests.data.conftest import write_images


def test_class_folder(class_folder: Path) -> None:
    d = load_image_data(str(class_folder))
    assert d.class_names == ["cats", "dogs"] and d.num_classes == 2
    assert d.data_shape == (3, 12, 12) and d.value_range == "uint8"
    # 10 % per class held out, seeded: round(1.2) + round(1.0) = 2
    assert len(d.x_heldout) == 2 and len(d.x_train) == 20
    assert sorted(d.y_heldout.tolist()) == [0, 1]
    assert d.x_train.dtype == torch.float32
    assert d.x_train.min() >= -1.0 and d.x_train.max() <= 1.0
    # pixel mapping: 0 -> -1, 255 -> 1 (read back one file)
    a = np.asarray(Image.open(class_folder / "dogs" / "000.png"), dtype=np.float32)
    x_all, _ = d.split("all")
    want = torch.from_numpy(a).permute(2, 0, 1) / 127.5 - 1
    assert any(torch.allclose(x, want) for x in x_all)


def test_split_is_seeded(class_folder: Path) -> None:
    a = load_image_data({"path": str(class_folder), "seed": 3}).x_heldout
    b = load_image_data({"path": str(class_folder), "seed": 3, "heldout": 0.1}).x_heldout
    assert torch.equal(a, b)


def test_flat_folder_is_unconditional(tmp_path: Path) -> None:
    write_images(tmp_path / "flat", 20, suffix=".jpg")
    p = get_problem(str(tmp_path / "flat"))
    assert p.num_classes == 0 and p.split("train")[1] is None and p.is_user_data


def test_webp_and_grey_detection(tmp_path: Path) -> None:
    write_images(tmp_path / "w", 20, suffix=".webp")
    assert load_image_data(str(tmp_path / "w")).data_shape == (3, 12, 12)
    write_images(tmp_path / "g", 20, colour=False)
    d = load_image_data(str(tmp_path / "g"))
    assert d.data_shape == (1, 12, 12)
    d = load_image_data({"path": str(tmp_path / "g"), "channels": "rgb"})
    assert d.data_shape == (3, 12, 12)


def test_resize_options(tmp_path: Path) -> None:
    write_images(tmp_path / "m", 20, size=(20, 12))
    write_images(tmp_path / "m", 4, size=(16, 16), seed=5)  # overwrites 000..003: mixed sizes
    d = load_image_data({"path": str(tmp_path / "m"), "resolution": 8, "channels": "grey"})
    assert d.data_shape == (1, 8, 8)
    d = load_image_data({"path": str(tmp_path / "m"), "resolution": 8, "resize": "stretch"})
    assert d.data_shape == (3, 8, 8)


def test_npy_value_ranges(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    d = load_image_data(str(tmp_path / "u8.npy"))
    assert d.value_range == "uint8"
    x_all, _ = d.split("all")
    assert torch.allclose(x_all.sort(0).values,
                          (torch.from_numpy(u8).float() / 127.5 - 1).sort(0).values)
    np.save(tmp_path / "unit.npy", rng.random((20, 3, 8, 8)).astype(np.float32))
    d = load_image_data(str(tmp_path / "unit.npy"))
    assert d.value_range == "unit" and d.x_train.min() < -0.9 and d.x_train.max() > 0.9
    np.save(tmp_path / "signed.npy", rng.uniform(-1, 1, (20, 3, 8, 8)).astype(np.float32))
    assert load_image_data(str(tmp_path / "signed.npy")).value_range == "signed"
    # a float array up to 255 read as declared uint8
    np.save(tmp_path / "f255.npy", u8.astype(np.float32))
    d = load_image_data({"path": str(tmp_path / "f255.npy"), "value_range": "uint8"})
    assert d.x_train.min() >= -1 and d.x_train.max() <= 1


def test_npz_and_safetensors_with_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((30, 1, 8, 8)).astype(np.float32)
    y = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    p = get_problem(str(tmp_path / "d.npz"))
    assert p.num_classes == 3 and p.data_shape == (1, 8, 8)
    save_file({"x": x, "y": y.astype(np.int64)}, str(tmp_path / "d.safetensors"))
    p = get_problem(str(tmp_path / "d.safetensors"))
    assert p.num_classes == 3
    p = get_problem({"path": str(tmp_path / "d.safetensors"), "labels": False})
    assert p.num_classes == 0


def test_nhwc_layout_option(tmp_path: Path) -> None:
    np.save(tmp_path / "hwc.npy", np.random.default_rng(0).random((20, 8, 8, 3)).astype(np.float32))
    d = load_image_data({"path": str(tmp_path / "hwc.npy"), "layout": "nhwc"})
    assert d.data_shape == (3, 8, 8)


def test_heldout_path(tmp_path: Path, class_folder: Path) -> None:
    write_images(tmp_path / "test" / "cats", 3, seed=7)
    write_images(tmp_path / "test" / "dogs", 3, seed=8)
    d = load_image_data({"path": str(class_folder), "heldout": str(tmp_path / "test")})
    assert len(d.x_train) == 22 and len(d.x_heldout) == 6


def test_hf_datasets_folder(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(20)]
    feats = datasets.Features({"image": datasets.Image(),
                               "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": imgs, "label": [i % 2 for i in range(20)]},
                                    features=feats)
    ds.save_to_disk(str(tmp_path / "hf"))
    d = load_image_data(str(tmp_path / "hf"))
    assert d.class_names == ["a", "b"] and d.data_shape == (3, 8, 8)


def test_builtins_and_canonical_form(tmp_path: Path, class_folder: Path) -> None:
    assert get_problem("digits").data_shape == (1, 8, 8)
    assert get_problem("moons").is_toy
    assert canonical_data("checkerboard") == "checkerboard"
    assert canonical_data(str(class_folder)) == str(class_folder.resolve())
    # a mapping with only default options is the bare path; others keep the options
    assert canonical_data({"path": str(class_folder), "seed": 0}) == str(class_folder.resolve())
    assert canonical_data({"path": str(class_folder), "resolution": 8}) == {
        "path": str(class_folder.resolve()), "resolution": 8}
    cfg = DistillConfig(data={"path": str(class_folder), "channels": "grey"})
    assert cfg.data == {"path": str(class_folder.resolve()), "channels": "grey"}
    assert get_problem(cfg.data).data_shape == (1, 12, 12)
