"""Readers of a user data set's files: a folder of images (class = sub-folder, or flat), a
saved Hugging Face ``datasets`` folder, ``.npy`` / ``.npz`` / ``.safetensors`` arrays -- each
to raw images ``(N, C, H, W)`` in model space ``[-1, 1]`` with optional labels, checked as they
are read (one-line :class:`~fewstep.errors.ConfigError` naming the file or index). Splitting and
caching: :mod:`fewstep.data.images`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from safetensors.numpy import load as st_load_numpy_bytes
from torch import Tensor

from fewstep.data.check import (
    check_labels,
    check_layout,
    infer_value_range,
)
from fewstep.data.registry import DATASETS
from fewstep.data.spec import (
    ARRAY_SUFFIXES,
    IMAGE_SUFFIXES,
    DataSpec,
)
from fewstep.errors import ConfigError
from fewstep.utils.files import check_regular, open_regular

X_KEYS = ("x", "images", "image", "img", "arr_0")
Y_KEYS = ("y", "labels", "label", "targets")
HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


@dataclass
class _Raw:
    """What a source yields before the split: images ``(N, C, H, W)`` in model space."""

    x: Tensor
    y: np.ndarray | None
    class_names: list[str]
    value_range: str


# ----------------------------------------------------------------------------- image files
#: Pillow modes read at 16 bits per channel (full scale 65535)
MODES_16 = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: modes that carry transparency: composited over white (the stated alpha policy)
MODES_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")


def pil_to_array(im: Image.Image, name: str) -> np.ndarray:
    """An image as ``(H, W, 3)``: ``uint8`` for 8-bit modes (``1``, ``L``, ``P``, ``RGB``,
    ``CMYK``, ``YCbCr``, ...), ``float32`` in ``[0, 1]`` for 16-bit grey (``I;16*``; ``I``
    when its values lie in 0..65535) -- read to full scale, never clipped. Transparency
    (``RGBA``, ``LA``, ``PA``, a palette with a transparent index) is composited over white.
    32-bit float images (``F``) are refused: their value range is not defined."""
    if im.mode in MODES_16:
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ConfigError(f"data: {name}: 32-bit integer image with values "
                              f"{a.min()}..{a.max()}; expected 0..65535 (16-bit)")
        g = (a.astype(np.float32) / 65535.0)[..., None]
        return np.repeat(g, 3, axis=2)
    if im.mode == "F":
        raise ConfigError(f"data: {name}: 32-bit float image (no defined value range); save "
                          "the images as an array file (.npy) and set data.value_range")
    if im.mode in MODES_ALPHA or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _fit_size(im: Image.Image, spec: DataSpec, name: str, first: tuple[str, tuple[int, int]] | None
              ) -> Image.Image:
    w, h = im.size
    r = spec.resolution
    if r is None:
        if first is not None and first[1] != (w, h):
            fw, fh = first[1]
            raise ConfigError(f"data: {name} is {w}x{h} but {first[0]} is {fw}x{fh}; images of "
                              f"mixed sizes need data.resolution (resized by data.resize)")
        return im
    if (w, h) == (r, r):
        return im
    if spec.resize == "none":
        raise ConfigError(f"data: {name} is {w}x{h} but data.resolution is {r} and data.resize "
                          f"is none")
    if spec.resize == "center_crop" and w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
    return im.resize((r, r), Image.Resampling.BICUBIC if max(w, h) < r else
                     Image.Resampling.LANCZOS)


def _read_image(path: Path, spec: DataSpec, first: tuple[str, tuple[int, int]] | None
                ) -> np.ndarray:
    try:
        with os.fdopen(open_regular(path, "data"), "rb") as f, Image.open(f) as im:
            im.load()
            im = _fit_size(im, spec, str(path), first)
            return pil_to_array(im, str(path))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, ConfigError):
            raise
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"data: {path}: unreadable image ({reason})") from None


def _images_to_tensor(arrays: list[np.ndarray], channels: str) -> Tensor:
    """``[(H, W, 3) uint8 | float32 in [0, 1]]`` -> ``(N, C, H, W)`` float32 in [-1, 1]."""
    if all(a.dtype == np.uint8 for a in arrays):
        x = np.stack(arrays).transpose(0, 3, 1, 2)
        t = torch.from_numpy(np.ascontiguousarray(x)).float() / 127.5 - 1.0
    else:
        unit = [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a for a in arrays]
        x = np.stack(unit).transpose(0, 3, 1, 2)
        t = torch.from_numpy(np.ascontiguousarray(x)) * 2.0 - 1.0
    return _set_channels(t, channels)


def _bits(arrays: list[np.ndarray]) -> str:
    """How the images were read: ``uint8``, or ``uint16`` if any was a 16-bit image."""
    return "uint8" if all(a.dtype == np.uint8 for a in arrays) else "uint16"


def _set_channels(x: Tensor, channels: str) -> Tensor:
    """``auto``: grey if every image is grey; ``grey``: luminance; ``rgb``: repeat grey."""
    c = x.shape[1]
    if channels == "auto":
        if c == 3 and bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()):
            return x[:, :1].contiguous()
        return x
    if channels == "grey" and c == 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    if channels == "rgb" and c == 1:
        return x.repeat(1, 3, 1, 1)
    return x


def _image_files(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        check_regular(p, "data")  # a FIFO / device / socket: refused, never opened
        if p.is_dir():
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise ConfigError(f"data: {p}: not an image file (expected "
                              f"{' / '.join(s[1:] for s in IMAGE_SUFFIXES)})")
        out.append(p)
    return out


def read_folder(folder: Path, spec: DataSpec) -> _Raw:
    """Class = sub-folder (sorted), or a flat folder of images (unconditional)."""
    entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    dirs = [p for p in entries if p.is_dir()]
    files = [p for p in entries if not p.is_dir()]
    if dirs and files:
        raise ConfigError(f"data: {folder} holds both files ({files[0].name}) and sub-folders "
                          f"({dirs[0].name}); use class sub-folders only, or a flat folder")
    groups: list[tuple[str, list[Path]]]
    if dirs:
        groups = []
        for d in dirs:
            fs = _image_files(d)
            if not fs:
                raise ConfigError(f"data: {d}: class folder holds no images")
            groups.append((d.name, fs))
    else:
        groups = [("", _image_files(folder))]
    if not any(fs for _, fs in groups):
        raise ConfigError(f"data: {folder}: no images found (PNG / JPEG / WebP / BMP)")
    arrays, labels = [], []
    first: tuple[str, tuple[int, int]] | None = None
    for label, (_, fs) in enumerate(groups):
        for f in fs:
            a = _read_image(f, spec, first)
            if first is None:
                first = (str(f), (a.shape[1], a.shape[0]))
            arrays.append(a)
            labels.append(label)
    x = _images_to_tensor(arrays, spec.channels)
    if dirs and spec.labels:
        return _Raw(x, np.asarray(labels, dtype=np.int64), [n for n, _ in groups],
                    _bits(arrays))
    return _Raw(x, None, [], _bits(arrays))


# ----------------------------------------------------------------------------------- arrays
def _pick(keys: list[str], wanted: str | None, defaults: tuple[str, ...], what: str,
          source: str, required: bool) -> str | None:
    if wanted is not None:
        if wanted not in keys:
            raise ConfigError(f"data: {source}: no {what} named {wanted!r} (has {keys})")
        return wanted
    for k in defaults:
        if k in keys:
            return k
    if required:
        raise ConfigError(f"data: {source}: no image array found (names tried: "
                          f"{', '.join(defaults)}; has {keys}); set data.x_key")
    return None


def _array_dict(path: Path) -> dict[str, np.ndarray]:
    suffix = path.suffix.lower()
    f = os.fdopen(open_regular(path, "data"), "rb")  # a FIFO is refused, never blocks
    try:
        if suffix == ".npy":
            return {"x": np.load(f, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(f, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        return dict(st_load_numpy_bytes(f.read()))
    except ConfigError:
        raise
    except Exception as e:  # numpy / safetensors raise several types for foreign files
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConfigError(f"data: {path}: cannot read the array file ({reason})") from None
    finally:
        f.close()


def _to_model_space(x: np.ndarray, value_range: str) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x).astype(np.float32, copy=False))
    if value_range == "uint8":
        return t / 127.5 - 1.0
    if value_range == "unit":
        return t * 2.0 - 1.0
    return t


def _resize_tensor(x: Tensor, spec: DataSpec, source: str) -> Tensor:
    r = spec.resolution
    h, w = x.shape[-2:]
    if r is None or (h, w) == (r, r):
        return x
    if spec.resize == "none":
        raise ConfigError(f"data: {source}: images are {w}x{h} but data.resolution is {r} and "
                          f"data.resize is none")
    if spec.resize == "center_crop" and h != w:
        s = min(h, w)
        x = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return F.interpolate(x, size=(r, r), mode="bilinear", antialias=True,
                         align_corners=False).clamp(-1.0, 1.0)


def read_arrays(path: Path, spec: DataSpec) -> _Raw:
    """``.npy`` / ``.npz`` / ``.safetensors``: images and optional labels."""
    arrays = _array_dict(path)
    keys = sorted(arrays)
    xk = _pick(keys, spec.x_key, X_KEYS, "image array", str(path), required=True)
    assert xk is not None
    yk = _pick(keys, spec.y_key, Y_KEYS, "label array", str(path), required=False)
    src = f"{path}[{xk}]" if path.suffix.lower() != ".npy" else str(path)
    x = check_layout(arrays[xk], src, spec.layout)
    vr = infer_value_range(x, spec.value_range, src)
    t = _resize_tensor(_set_channels(_to_model_space(x, vr), spec.channels), spec, src)
    y = arrays[yk] if (yk is not None and spec.labels) else None
    return _Raw(t, y, [], vr)


# ---------------------------------------------------------------------------- HF datasets
def is_hf_dataset(folder: Path) -> bool:
    return any((folder / m).is_file() for m in HF_MARKERS)


def read_hf_dataset(folder: Path, spec: DataSpec) -> _Raw:
    """A folder written by ``datasets``' ``save_to_disk`` (optional dependency)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"data: {folder} is a Hugging Face datasets folder; install the "
                          f"optional extra: pip install 'fewstep[datasets]'") from None
    try:
        ds: Any = datasets.load_from_disk(str(folder))
    except Exception as e:  # datasets raises several types for broken folders
        raise ConfigError(f"data: {folder}: cannot load the datasets folder "
                          f"({' '.join(str(e).split())[:200]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise ConfigError(f"data: {folder}: splits {sorted(ds)} and none is 'train'")
    if len(ds) == 0:
        raise ConfigError(f"data: {folder}: the dataset holds no rows")
    cols = list(ds.column_names)
    feats = ds.features
    img_cols = [c for c in cols if isinstance(feats[c], datasets.Image)]
    xk = spec.x_key or (img_cols[0] if img_cols else None) or \
        _pick(cols, None, X_KEYS, "image column", str(folder), required=True)
    if xk not in cols:
        raise ConfigError(f"data: {folder}: no column named {xk!r} (has {cols})")
    lab_cols = [c for c in cols if isinstance(feats[c], datasets.ClassLabel)]
    yk = spec.y_key or (lab_cols[0] if lab_cols else None) or \
        _pick(cols, None, Y_KEYS, "label column", str(folder), required=False)
    if isinstance(feats[xk], datasets.Image):
        arrays: list[np.ndarray] = []
        first: tuple[str, tuple[int, int]] | None = None
        for i, im in enumerate(ds[xk]):
            name = f"{folder}[{i}]"
            try:
                a = pil_to_array(_fit_size(im, spec, name, first), name)
            except (OSError, ValueError) as e:
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError(f"data: {name}: unreadable image ({e})") from None
            if first is None:
                first = (name, (a.shape[1], a.shape[0]))
            arrays.append(a)
        x = _images_to_tensor(arrays, spec.channels)
        vr = _bits(arrays)
    else:
        arr = check_layout(np.asarray(ds.with_format("numpy")[xk]), f"{folder}[{xk}]",
                           spec.layout)
        vr = infer_value_range(arr, spec.value_range, f"{folder}[{xk}]")
        x = _resize_tensor(_set_channels(_to_model_space(arr, vr), spec.channels), spec,
                           str(folder))
    y, names = None, []
    if yk is not None and spec.labels:
        y = np.asarray(ds[yk])
        if isinstance(feats[yk], datasets.ClassLabel):
            names = list(feats[yk].names)
    return _Raw(x, y, names, vr)


# -------------------------------------------------------------------------------- loading
def read_source(path: str, spec: DataSpec) -> _Raw:
    """Dispatch on what ``path`` is; the labels are checked here."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data: {p}: no such file or folder (built-in data sets: "
                          f"{', '.join(DATASETS.names())})")
    check_regular(p, "data")
    if p.is_dir():
        raw = read_hf_dataset(p, spec) if is_hf_dataset(p) else read_folder(p, spec)
    elif p.suffix.lower() in ARRAY_SUFFIXES:
        raw = read_arrays(p, spec)
    elif p.suffix.lower() in IMAGE_SUFFIXES:
        raise ConfigError(f"data: {p} is a single image; point data at the folder that holds "
                          f"the images")
    else:
        raise ConfigError(f"data: {p}: not a folder of images or a .npy / .npz / .safetensors "
                          f"file")
    if raw.x.shape[0] == 0:
        raise ConfigError(f"data: {p}: the data set is empty")
    if raw.y is not None:
        raw.y, ncls = check_labels(raw.y, raw.x.shape[0], spec.num_classes, str(p))
        if not raw.class_names:
            raw.class_names = [str(i) for i in range(ncls)]
        elif spec.num_classes is not None and len(raw.class_names) > spec.num_classes:
            raise ConfigError(f"data: {p}: {len(raw.class_names)} classes but data.num_classes "
                              f"is {spec.num_classes}")
    return raw


__all__ = ["is_hf_dataset", "read_arrays", "read_folder", "read_hf_dataset", "read_source"]
