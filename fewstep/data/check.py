"""Data checks run before any training: each failure is one :class:`ConfigError` line that
names the file (and index) and the reason, reported by the CLI with exit code 2.

The checks take numpy arrays as read from disk, *before* normalisation, so that the message
quotes the user's own values and indices.
"""

from __future__ import annotations

import numpy as np

from fewstep.data.spec import MAX_CLASSES, VALUE_RANGES
from fewstep.errors import ConfigError

#: images per part (train and held-out) needed at least after the split
MIN_PER_SPLIT = 2



def check_layout(x: np.ndarray, source: str, layout: str = "nchw") -> np.ndarray:
    """Return ``x`` as ``(N, C, H, W)`` (C 1 or 3) or raise naming the layout problem."""
    shape = tuple(x.shape)
    if x.ndim == 0 or shape[0] == 0:
        raise ConfigError(f"data: {source}: the array holds no images (shape {shape})")
    if x.ndim == 2:
        raise ConfigError(f"data: {source}: shape {shape} is (N, D) flat vectors; images must be "
                          f"(N, C, H, W) with C = 1 or 3 (e.g. x.reshape(N, 1, H, W))")
    if x.ndim == 3:
        raise ConfigError(f"data: {source}: shape {shape} is (N, H, W) without a channel axis; "
                          f"images must be (N, C, H, W) with C = 1 or 3 (e.g. x[:, None])")
    if x.ndim != 4:
        raise ConfigError(f"data: {source}: shape {shape} has {x.ndim} axes; images must be "
                          f"(N, C, H, W) with C = 1 or 3")
    if layout == "nhwc":
        if shape[3] not in (1, 3):
            raise ConfigError(f"data: {source}: shape {shape} with data.layout nhwc needs 1 or 3 "
                              f"channels in the last axis")
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if shape[1] not in (1, 3):
        if shape[3] in (1, 3):
            raise ConfigError(f"data: {source}: shape {shape} looks channels-last (N, H, W, C); "
                              f"transpose to (N, C, H, W) (x.transpose(0, 3, 1, 2)) or set "
                              f"data.layout: nhwc")
        raise ConfigError(f"data: {source}: shape {shape}: axis 1 (channels) must be 1 or 3")
    return x


def check_finite(x: np.ndarray, source: str) -> None:
    """NaN / Inf anywhere: name the first image index and the value."""
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            v = x.reshape(x.shape[0], -1)[i][bad.reshape(x.shape[0], -1)[i]][0]
            raise ConfigError(f"data: {source}: image {i} contains {v} (NaN / Inf values are "
                              f"not allowed)")


def infer_value_range(x: np.ndarray, declared: str, source: str) -> str:
    """The value convention of ``x`` (``uint8`` | ``unit`` | ``signed``): the declared one
    (after checking every value lies in it) or, for ``auto``, the one detected from the dtype and
    the values (see :mod:`fewstep.data.spec`). Raises naming the first offending image."""
    if x.dtype == np.bool_:
        raise ConfigError(f"data: {source}: boolean arrays are not images; convert to uint8 "
                          f"0 / 255 or float 0 / 1")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ConfigError(f"data: {source}: dtype {x.dtype} is not numeric")
    check_finite(x, source)
    flat = x.reshape(x.shape[0], -1)
    lo, hi = float(flat.min()), float(flat.max())
    if declared == "auto":
        if x.dtype == np.uint8:
            return "uint8"
        if np.issubdtype(x.dtype, np.integer):
            raise ConfigError(f"data: {source}: integer dtype {x.dtype} (values {lo:g}..{hi:g}); "
                              f"declare data.value_range: uint8 for 0..255 data")
        if lo >= -1.0 and hi <= 1.0:
            return "signed" if lo < 0.0 else "unit"
        i = int(np.argmax((flat < -1.0).any(1) | (flat > 1.0).any(1)))
        raise ConfigError(f"data: {source}: float values span {lo:g}..{hi:g} (first outside "
                          f"[-1, 1]: image {i}); declare data.value_range (uint8 for 0..255, "
                          f"unit for [0, 1], signed for [-1, 1]) after rescaling if needed")
    rlo, rhi = VALUE_RANGES[declared]
    tol = 1e-4 * (rhi - rlo)
    outside = (flat < rlo - tol).any(1) | (flat > rhi + tol).any(1)
    if outside.any():
        i = int(np.argmax(outside))
        row = flat[i]
        v = row[(row < rlo - tol) | (row > rhi + tol)][0]
        raise ConfigError(f"data: {source}: image {i} has value {v:g}, outside the declared "
                          f"data.value_range {declared} [{rlo:g}, {rhi:g}]")
    return declared


def check_labels(y: np.ndarray, n: int, num_classes: int | None, source: str
                 ) -> tuple[np.ndarray, int]:
    """Labels must be integers ``(N,)`` in ``[0, num_classes)``; returns ``(labels as int64,
    class count)`` (``num_classes`` or largest label + 1, at most :data:`MAX_CLASSES`).

    The values are checked in the array's own dtype, before any cast (a uint64 label beyond
    the int64 range is quoted as written) and before anything is sized from them."""
    if y.ndim != 1 or y.shape[0] != n:
        raise ConfigError(f"data: {source}: labels have shape {tuple(y.shape)}, expected ({n},) "
                          f"(one integer per image)")
    if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer) or
                                   np.issubdtype(y.dtype, np.floating)):
        raise ConfigError(f"data: {source}: labels must be integers, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and not (np.isfinite(y).all() and
                                                    (y == np.round(y)).all()):
        raise ConfigError(f"data: {source}: labels must be integers, got dtype {y.dtype}")
    if n == 0:
        return y.astype(np.int64), num_classes or 0
    neg = np.flatnonzero(y < 0)
    if neg.size:
        raise ConfigError(f"data: {source}: label {_label(y[neg[0]])} at index {int(neg[0])} "
                          f"is negative; labels must lie in [0, classes)")
    limit = num_classes if num_classes is not None else MAX_CLASSES
    over = np.flatnonzero(y >= limit)
    if num_classes is not None:
        null = np.flatnonzero(y == num_classes)
        if null.size:
            raise ConfigError(f"data: {source}: label {num_classes} at index {int(null[0])} "
                              f"equals the null class (num_classes = {num_classes}; the null "
                              f"class means 'no label' for classifier-free guidance)")
        if over.size:
            raise ConfigError(f"data: {source}: label {_label(y[over[0]])} at index "
                              f"{int(over[0])} is outside [0, {num_classes}) (data.num_classes)")
        return y.astype(np.int64), num_classes
    if over.size:
        raise ConfigError(f"data: {source}: label {_label(y[over[0]])} at index {int(over[0])}: "
                          f"fewstep takes at most {MAX_CLASSES} classes (labels 0 .. "
                          f"{MAX_CLASSES - 1}); number the classes from 0")
    y = y.astype(np.int64)
    return y, int(y.max()) + 1


def _label(v: np.generic) -> str:
    """A label as the user wrote it (integer-valued floats without ``.0``)."""
    return str(int(v)) if float(v).is_integer() or np.issubdtype(type(v), np.integer) \
        else str(v)


def check_split_sizes(n_total: int, n_heldout: int, heldout: float, source: str) -> None:
    """Both parts of a fractional split need :data:`MIN_PER_SPLIT` images."""
    if n_heldout < MIN_PER_SPLIT or n_total - n_heldout < MIN_PER_SPLIT:
        raise ConfigError(f"data: {source}: too few images ({n_total}) for a held-out fraction "
                          f"of {heldout:g} ({n_heldout} held out, {n_total - n_heldout} for "
                          f"training; each needs at least {MIN_PER_SPLIT}); add images or set "
                          f"data.heldout to a separate folder / file")


__all__ = ["MIN_PER_SPLIT", "check_finite", "check_labels", "check_layout", "check_split_sizes",
           "infer_value_range"]
