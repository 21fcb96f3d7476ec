"""``data:`` of a config: a built-in name, a path, or a mapping with ``path:`` and options.

Accepted values (see docs/own_images.md):

* a built-in name: ``digits``, ``8gaussians``, ``checkerboard``, ``moons``;
* a path: a folder of images (one sub-folder per class, or a flat folder = unconditional;
  PNG / JPEG / WebP / BMP), a ``.npy`` / ``.npz`` / ``.safetensors`` array file (images
  ``(N, C, H, W)`` with ``C`` 1 or 3, optional integer labels ``(N,)``), or a folder written by
  Hugging Face ``datasets``' ``save_to_disk`` (needs the optional ``datasets`` extra);
* a mapping ``{path: ..., resolution: 16, channels: rgb, ...}`` (:class:`DataSpec`).

Value convention: every loader returns float32 images in model space ``[-1, 1]``. Image files
are 0..255. Arrays state their range with ``value_range``: ``uint8`` (0..255), ``unit``
([0, 1]) or ``signed`` ([-1, 1]); ``auto`` takes ``uint8`` for uint8 arrays, ``signed`` for
floats with negative values in [-1, 1], ``unit`` for floats in [0, 1], and refuses anything
else (a float array up to 255 must be declared, never trained raw).

:func:`canonical_data` turns any accepted value into one canonical, JSON-able form: the name,
the resolved path (a string) when no option differs from its default, else a dict of the
options that differ (with resolved paths). Configs, teacher files and student files store that
form, so "same data" is plain equality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeGuard

from pydantic import Field, field_validator

from fewstep.data.registry import DATASETS
from fewstep.errors import ConfigError
from fewstep.utils.config_files import Seed, StrictModel, user_path, validate

#: image file suffixes read through Pillow
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: array file suffixes
ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors")

#: most classes a data set may have (labels size the label embedding and the class names)
MAX_CLASSES = 100_000

ValueRange = Literal["auto", "uint8", "unit", "signed"]
VALUE_RANGES: dict[str, tuple[float, float]] = {"uint8": (0.0, 255.0), "unit": (0.0, 1.0),
                                                "signed": (-1.0, 1.0)}


class DataSpec(StrictModel):
    """A user data set and how to read it.

    Attributes:
        path: folder of images, array file, or a saved ``datasets`` folder.
        resolution: side of the square model input in pixels; ``None`` keeps the native size
            (every image must then have the same size).
        channels: ``grey`` (1 channel, luminance), ``rgb`` (3) or ``auto`` (grey when every
            image is grey, else RGB; arrays keep their own channel count).
        resize: how images that differ from ``resolution`` are brought to it:
            ``center_crop`` (largest centred square, then resize), ``stretch`` (resize as is)
            or ``none`` (they must already have that size).
        value_range: the arrays' value convention (see module docstring); image files are
            always 0..255.
        layout: ``nchw`` (default) or ``nhwc`` for channels-last arrays.
        heldout: fraction of the images held out for evaluation (per class, seeded), or the
            path of a second data source read with the same options.
        seed: seed of the held-out split.
        x_key / y_key: array names in ``.npz`` / ``.safetensors`` files or column names of a
            ``datasets`` folder (default: the first of ``x, images, image, img, arr_0`` /
            ``y, labels, label, targets``).
        labels: ``False`` ignores labels (unconditional model).
        num_classes: number of classes; labels must lie in ``[0, num_classes)`` (the value
            ``num_classes`` itself is the null class of classifier-free guidance). Default:
            largest label + 1.
    """

    path: str
    resolution: int | None = Field(None, ge=2, le=1024)
    channels: Literal["auto", "grey", "rgb"] = "auto"
    resize: Literal["center_crop", "stretch", "none"] = "center_crop"
    value_range: ValueRange = "auto"
    layout: Literal["nchw", "nhwc"] = "nchw"
    heldout: float | str = 0.1
    seed: Seed = 0
    x_key: str | None = None
    y_key: str | None = None
    labels: bool = True
    num_classes: int | None = Field(None, ge=1, le=MAX_CLASSES)

    @field_validator("path")
    @classmethod
    def _path_ok(cls, v: str) -> str:
        return user_path(v)

    @field_validator("heldout")
    @classmethod
    def _heldout_ok(cls, v: float | str) -> float | str:
        if isinstance(v, str):
            return user_path(v)
        if not 0.0 < v < 1.0:
            raise ValueError("must be a fraction in (0, 1) or the path of a held-out set")
        return float(v)


def is_builtin(data: object) -> TypeGuard[str]:
    """``True`` for a registered built-in data set (:data:`~fewstep.data.registry.DATASETS`)."""
    return isinstance(data, str) and data in DATASETS


def as_spec(data: str | dict[str, Any] | DataSpec) -> DataSpec:
    """A :class:`DataSpec` for a path or a mapping (``ConfigError`` naming ``data.*``)."""
    if isinstance(data, DataSpec):
        return data
    if isinstance(data, str):
        if not data.strip():
            raise ConfigError("data: must be a built-in name or a path, got an empty string")
        data = {"path": data}
    if not isinstance(data, dict):
        raise ConfigError(f"data: must be a name, a path or a mapping with path:, got "
                          f"{type(data).__name__}")
    if "path" not in data:
        raise ConfigError("data: a mapping needs path: (a folder or array file)")
    try:
        return validate(DataSpec, data, "data")
    except ConfigError as e:
        raise ConfigError(str(e).replace("invalid data: ", "data.", 1)) from None


def canonical_data(data: str | dict[str, Any] | DataSpec) -> str | dict[str, Any]:
    """The canonical form of a ``data`` value (see module docstring). Only *validates* the
    options and resolves paths; the data itself is read by
    :func:`fewstep.data.images.load_image_data`."""
    if is_builtin(data):
        return data
    spec = as_spec(data)
    diff = spec.model_dump(exclude_defaults=True)
    diff["path"] = spec.path
    return spec.path if list(diff) == ["path"] else diff


def missing_data_path(canon: str | dict[str, Any]) -> str | None:
    """The data path of a canonical value when it does not exist (``None`` otherwise)."""
    if is_builtin(canon):
        return None
    path = canon if isinstance(canon, str) else canon["path"]
    return None if Path(path).exists() else path


def data_label(data: str | dict[str, Any] | DataSpec) -> str:
    """A short display name: the built-in name or the file / folder name."""
    if is_builtin(data):
        return str(data)
    path = as_spec(data).path
    return Path(path).name or path


__all__ = ["ARRAY_SUFFIXES", "IMAGE_SUFFIXES", "MAX_CLASSES", "VALUE_RANGES", "DataSpec",
           "as_spec", "canonical_data", "data_label", "is_builtin", "missing_data_path"]
