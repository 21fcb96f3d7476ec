"""Latent layouts: how a pipeline holds the VAE latents ``x (B, C, H, W)``.

A pipeline keeps its latents in a *loop layout* (what ``scheduler.step`` sees), feeds its
denoiser a *net layout* and takes ``latents=`` in an *input layout* (what ``prepare_latents``
draws). Each is one of the registered :class:`Layout` s, inferred from a recording (the one
whose ``to_bchw`` of the recorded tensor reproduces the scheduler's sample); a family entry can
pin one. ``to_native(x)`` and ``to_bchw(native, aspect)`` are exact inverses (pure reshapes;
``aspect = height / width`` of the image, for token layouts that lose the 2-d shape).

Built in: ``bchw`` (as is), ``packed_2x2`` (Flux's tokens ``(B, HW/4, 4C)``), ``patch_2x2``
(Flux.2's ``latents=``: ``(B, 4C, H/2, W/2)``), ``frame_list`` (Z-Image: a list of
``(C, 1, H, W)``), ``bc1hw`` (a one-frame video VAE: ``(B, C, 1, H, W)``). Add one with
``LAYOUTS.register(name)(Layout(...))`` from a ``plugins:`` module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fewstep.teachers.diffusers.call_tree import is_row_list
from fewstep.utils.registry import Registry


@dataclass(frozen=True)
class Layout:
    """``to_native(x (B, C, H, W)) -> native``, ``to_bchw(native, aspect) -> x``, and ``fits``
    (could ``native`` be in this layout: its type and rank)."""

    name: str
    to_native: Callable[[Tensor], Any]
    to_bchw: Callable[[Any, float], Tensor]
    fits: Callable[[Any], bool]


def _check_name(name: str, layout: Layout) -> None:
    if layout.name != name:
        raise ValueError(f"layout {layout.name!r} registered under another name {name!r}")


#: layout name -> :class:`Layout`
LAYOUTS: Registry[Layout] = Registry("latent layout", "Family.net_layout", _check_name)


def _hw(tokens: int, aspect: float) -> tuple[int, int]:
    h = round(math.sqrt(tokens * aspect))
    w = tokens // max(h, 1)
    if h * w != tokens:
        raise ValueError(f"{tokens} tokens do not form an image of aspect {aspect:g}")
    return h, w


def pack_2x2(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, (H/2)(W/2), 4C)`` (Flux's ``_pack_latents`` order)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(
        b, (h // 2) * (w // 2), c * 4)


def unpack_2x2(t: Tensor, aspect: float) -> Tensor:
    """Inverse of :func:`pack_2x2` (``aspect``: image height / width)."""
    b, n, c4 = t.shape
    h, w = _hw(n, aspect)
    return t.view(b, h, w, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(
        b, c4 // 4, 2 * h, 2 * w)


def patch_2x2(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)`` (Flux.2's ``_patchify_latents`` order)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(
        b, c * 4, h // 2, w // 2)


def unpatch_2x2(p: Tensor, aspect: float = 1.0) -> Tensor:
    """Inverse of :func:`patch_2x2`."""
    b, c4, h, w = p.shape
    return p.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(
        b, c4 // 4, 2 * h, 2 * w)


def _add(layout: Layout) -> None:
    LAYOUTS.register(layout.name)(layout)


_add(Layout("bchw", lambda x: x, lambda n, a: n, lambda n: torch.is_tensor(n) and n.ndim == 4))
_add(Layout("packed_2x2", pack_2x2, unpack_2x2,
            lambda n: torch.is_tensor(n) and n.ndim == 3 and n.shape[-1] % 4 == 0))
_add(Layout("patch_2x2", patch_2x2, unpatch_2x2,
            lambda n: torch.is_tensor(n) and n.ndim == 4 and n.shape[1] % 4 == 0))
_add(Layout("frame_list", lambda x: list(x.unsqueeze(2).unbind(0)),
            lambda n, a: torch.stack(list(n), 0).squeeze(2),
            lambda n: is_row_list(n) and n[0].ndim == 4 and n[0].shape[1] == 1))
_add(Layout("bc1hw", lambda x: x.unsqueeze(2), lambda n, a: n.squeeze(2),
            lambda n: torch.is_tensor(n) and n.ndim == 5 and n.shape[2] == 1))


def candidates(native: Any, names: list[str] | None = None) -> list[Layout]:
    """The registered layouts ``native`` fits (only ``names`` when given), in order."""
    return [lay for n, lay in LAYOUTS.items() if (names is None or n in names)
            and lay.fits(native)]


__all__ = ["LAYOUTS", "Layout", "candidates", "pack_2x2", "patch_2x2", "unpack_2x2",
           "unpatch_2x2"]
